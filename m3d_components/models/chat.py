"""A local instruction-following LLM answering many chat prompts in batches, for data generation.

Greedy decoding through ``transformers``' ``generate`` (KV cache on, prompts left-padded and attention-masked), in
batches of prompts of similar length so little compute goes to padding. The chat template is used when the
tokenizer has one; otherwise the messages are joined as plain text. Results come back in the input order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from jinja2 import TemplateError
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from m3d_components.models.local import load_causal_lm, load_tokenizer

__all__ = ["ChatLM"]

logger = logging.getLogger(__name__)

# One prompt: chat messages [{"role": "system" | "user" | "assistant", "content": …}, …], as transformers takes them.
Messages = Sequence[Mapping[str, str]]


class ChatLM:
    """Batched greedy chat completion with a local causal LM.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (a pad token is taken from EOS when it has none).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: default reply length limit.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 8,
        max_new_tokens: int = 512,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.context = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_local(cls, path: str | Path, device: str | None = None, **kwargs) -> ChatLM:
        """Load from a local Hugging Face folder or GGUF file (bf16 on GPU, fp32 on CPU)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = load_causal_lm(path, dtype=dtype).to(device)
        logger.info("data-generation LLM %s (%s, %.1fM params) on %s", path, type(model).__name__,
                    sum(p.numel() for p in model.parameters()) / 1e6, device)
        return cls(model, load_tokenizer(path), **kwargs)

    def render(self, messages: Messages) -> str:
        """The prompt text of one conversation, ending where the assistant's next reply starts.

        Chat templates that refuse a system turn (Gemma's, older Mistral ones) get the system text at the start of
        the first user turn instead.
        """
        chat = [dict(m) for m in messages]
        if not self.tokenizer.chat_template:
            return "".join(f"{m['role']}: {m['content']}\n\n" for m in chat) + "assistant: "
        try:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            if chat[0]["role"] != "system" or len(chat) < 2:
                raise
            merged = [{"role": chat[1]["role"], "content": f"{chat[0]['content']}\n\n{chat[1]['content']}"}, *chat[2:]]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def too_long(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> list[int]:
        """Indices of the prompts that leave fewer than ``max_new_tokens`` positions in the model's context."""
        if not self.context:
            return []
        room = self.context - (max_new_tokens or self.max_new_tokens)
        return [i for i, p in enumerate(prompts) if len(self._ids(self.render(p))) > room]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def complete(
        self,
        prompts: Sequence[Messages],
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        prefix: str | Sequence[str] = "",
        stop: Sequence[str] = (),
    ) -> list[str]:
        """The reply to every prompt, in input order.

        Args:
            prompts: one message list per prompt.
            max_new_tokens: reply length limit (default: the instance's).
            batch_size: prompts per ``generate`` call (default: the instance's).
            prefix: the start of every reply (one string, or one per prompt), written into the prompt to prime a
                layout; returned replies include it.
            stop: strings that end a reply early (each sequence stops on its own; the string is kept), so a batch
                does not run to ``max_new_tokens`` when only a line is wanted.

        Raises:
            ValueError: a prompt that leaves no room for a reply in the model's context; the message names it.
        """
        max_new = max_new_tokens or self.max_new_tokens
        prefixes = [prefix] * len(prompts) if isinstance(prefix, str) else list(prefix)
        if len(prefixes) != len(prompts):
            raise ValueError(f"{len(prefixes)} prefixes for {len(prompts)} prompts")
        texts = [self.render(p) + start for p, start in zip(prompts, prefixes)]
        ids = [self._ids(t) for t in texts]
        if self.context:
            for i, seq in enumerate(ids):
                if len(seq) + max_new > self.context:
                    raise ValueError(
                        f"prompt {i} has {len(seq)} tokens; with {max_new} new tokens it exceeds the LLM's context "
                        f"of {self.context}. Shorten the input text (e.g. --max_report_words)."
                    )
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        replies: list[str] = [""] * len(ids)
        device = self.model.device
        self.tokenizer.padding_side = "left"
        step = batch_size or self.batch_size
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(device)
            stopping = {"stop_strings": list(stop), "tokenizer": self.tokenizer} if stop else {}
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                **stopping,
            )
            new = out[:, batch["input_ids"].shape[1]:]
            for i, row in zip(chunk, new):
                replies[i] = prefixes[i] + self.tokenizer.decode(row, skip_special_tokens=True).rstrip()
        return replies
