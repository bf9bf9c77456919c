"""Collators that tokenize text once per batch, padding to the longest sample rather than to a fixed 512, or packing
several samples into each row."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from m3d_components.data.prompts import with_image_tokens
from m3d_components.data.transforms import AUGMENTATION_KEY
from m3d_components.models.packing import pack_order, packed_rows

__all__ = ["ImageTextCollator", "InstructionCollator"]


class ImageTextCollator:
    """Stack images and tokenize one text field of each sample: ``image``, ``input_ids``, ``attention_mask``.

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. BERT WordPiece for CLIP).
        max_length: token budget; longer texts are truncated (the dataset already shortens reports sentence-wise).
        text_key: the sample field to tokenize; None collates images only.
        keep: other sample fields to pass through as lists (e.g. ``image_path`` for inference outputs).

    Samples from ``train_transforms(on_device=True)`` carry their augmentation draw; it is stacked as
    ``augmentation`` (B, 6) for :class:`~m3d_components.engines.batch.PrepareImageTextBatch` to apply.
    """

    def __init__(
        self, tokenizer=None, max_length: int = 512, text_key: str | None = "text", keep: Sequence[str] = ()
    ) -> None:
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_key = text_key
        self.keep = tuple(keep)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"image": torch.stack([torch.as_tensor(s["image"]) for s in samples])}
        if self.text_key is not None:
            tokens = self.tokenizer(
                [s[self.text_key] for s in samples],
                padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt",
            )
            batch.update(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        batch.update(_augmentation(samples))
        batch.update({k: [s[k] for s in samples] for k in self.keep})
        return batch


class InstructionCollator:
    """Tokenize (question, answer) samples for LaMed: training tensors and, alongside, left-padded prompts.

    The prompt is ``num_image_tokens`` × ``<im_patch>`` + question (see
    :func:`~m3d_components.data.prompts.with_image_tokens`); the target is ``" " + answer`` + EOS. Prompt and answer
    are tokenized separately, so the label boundary is exact; prompt and padding positions get label −100.

    Output keys: ``image``; ``input_ids``/``attention_mask``/``labels`` (right-padded to the longest sample; with
    ``pack``, ``input_ids``/``position_ids``/``labels`` instead);
    ``prompt_ids``/``prompt_mask`` (the prompts alone, left-padded, for batched generation); the ``keep`` fields as
    lists (``question``, ``answer``, ``task`` … for metrics and outputs); ``augmentation`` (B, 6) when samples carry
    a device-side augmentation draw (``train_transforms(on_device=True)``), except with ``zero_images``, whose
    zeros must stay zeros.

    Args:
        tokenizer: the LLM tokenizer with the LaMed tokens added (:func:`~m3d_components.models.lamed.add_lamed_tokens`).
        num_image_tokens: placeholders per prompt (the perceiver's ``num_tokens``).
        max_length: the context budget; a longer target is cut (no EOS then, as published), a longer prompt is an error.
        keep: sample fields passed through as lists.
        zero_images: replace images by zeros (the image-free control).
        masks: also stack the target masks as ``seg`` (B, 1, D, H, W) float, zeros for samples without one (for
            ``[SEG]`` training: only samples with ``[SEG]`` in the answer and a non-empty mask get mask losses).
        pack: training batches without padding between samples: the samples are packed first-fit (longest first) into
            rows as long as the longest sample, with ``position_ids`` restarting at each sample and no
            ``attention_mask``, from which transformers builds a mask that keeps attention inside each sample. The
            loss is the padded batch's; the LLM runs on fewer rows (42 % of a demo stage-2 batch was padding). Every
            per-sample output (images, masks, prompts, kept fields) follows the packed order, the order in which the
            image placeholders appear row by row (which is how :class:`~m3d_components.models.lamed_seg.LaMedSeg`
            finds each sample's ``[SEG]``).

    Raises:
        ValueError: a prompt that does not fit ``max_length``, naming the sample's image and task.
    """

    def __init__(
        self, tokenizer, num_image_tokens: int, max_length: int = 512,
        keep: Sequence[str] = ("question", "answer", "task", "image_path"), zero_images: bool = False,
        masks: bool = False, pack: bool = False,
    ) -> None:
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the LLM tokenizer needs eos and pad tokens (see add_lamed_tokens)")
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.keep = tuple(keep)
        self.zero_images = zero_images
        self.masks = masks
        self.pack = pack

    def prompts(self, samples: list[dict[str, Any]]) -> list[str]:
        return [
            with_image_tokens(s["question"], self.num_image_tokens, caption=s.get("task") == "caption")
            for s in samples
        ]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tokenizer
        prompt_ids = tok(self.prompts(samples), add_special_tokens=True)["input_ids"]
        for ids, sample in zip(prompt_ids, samples):
            if len(ids) >= self.max_length:
                raise ValueError(
                    f"the prompt of {sample.get('image_path', '?')} ({sample.get('task', '?')}) takes {len(ids)} "
                    f"tokens, leaving no room for an answer in the context of {self.max_length}: raise max_length or "
                    "shorten the question"
                )
        answer_ids = tok([" " + s["answer"] for s in samples], add_special_tokens=False)["input_ids"]
        sequences, targets = [], []
        for prompt, answer in zip(prompt_ids, answer_ids):
            answer = (answer + [tok.eos_token_id])[: self.max_length - len(prompt)]
            sequences.append(prompt + answer)
            targets.append([-100] * len(prompt) + answer)
        rows = pack_order([len(s) for s in sequences]) if self.pack else [[i] for i in range(len(samples))]
        order = [i for row in rows for i in row]
        samples, prompt_ids = [samples[i] for i in order], [prompt_ids[i] for i in order]
        images = torch.stack([torch.as_tensor(s["image"]) for s in samples])
        batch: dict[str, Any] = {"image": torch.zeros_like(images) if self.zero_images else images}
        if self.pack:
            batch["input_ids"], batch["position_ids"], batch["labels"] = packed_rows(
                [[sequences[i] for i in row] for row in rows], [[targets[i] for i in row] for row in rows],
                tok.pad_token_id)
        else:
            batch["input_ids"], batch["attention_mask"] = _pad(sequences, tok.pad_token_id, left=False)
            batch["labels"], _ = _pad(targets, -100, left=False)
        batch["prompt_ids"], batch["prompt_mask"] = _pad(prompt_ids, tok.pad_token_id, left=True)
        if self.masks:
            batch["seg"] = torch.stack([
                torch.as_tensor(s["seg"], dtype=torch.float32) if "seg" in s else torch.zeros_like(images[i][:1])
                for i, s in enumerate(samples)
            ])
        if not self.zero_images:
            batch.update(_augmentation(samples))
        batch.update({k: [s.get(k) for s in samples] for k in self.keep})
        return batch


def _augmentation(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``{"augmentation": (B, 6)}`` when any sample carries a device-side draw, else nothing.

    A sample without one (e.g. from a task whose chain draws on the CPU) gets zeros, the identity draw, so a mixed
    batch still stacks and that sample's image is left as its own chain made it.
    """
    if not any(AUGMENTATION_KEY in s for s in samples):
        return {}
    identity = torch.zeros(6, dtype=torch.float32)
    return {AUGMENTATION_KEY: torch.stack([torch.as_tensor(s.get(AUGMENTATION_KEY, identity)) for s in samples])}


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one (B, L) tensor and its 0/1 mask, on the right (training) or the left (generation)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
