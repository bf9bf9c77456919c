"""M3D-LaMed: a 3D vision encoder and a spatial-pooling perceiver feeding image tokens into any causal LM.

The prompt carries one ``<im_patch>`` placeholder per image token. :meth:`LaMed.embed` swaps the placeholder
embeddings for the projected image features wherever the placeholder ids are — not at a fixed offset — so a tokenizer
without BOS, left padding for batched generation, or text before the image all stay correct. The LLM is any
Hugging Face causal LM; LoRA and freezing are applied from outside (:mod:`m3d_components.models.trainable`).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from m3d_components.data.tokens import IMAGE_TOKEN, SEG_TOKEN, SPECIAL_TOKENS
from m3d_components.models.local import load_causal_lm, load_tokenizer, resolve_local_model
from m3d_components.models.packing import is_packed
from m3d_components.models.perceiver import SpatialPoolingPerceiver, pooled_token_count
from m3d_components.models.vision import ViTConfig, VisionTransformer3D, load_vit_weights

__all__ = ["LaMed", "add_lamed_tokens", "build_lamed", "lamed_tokenizer", "resize_with_mean_init"]

logger = logging.getLogger(__name__)


def add_lamed_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<im_patch>``, ``<bx_start>``, ``<bx_end>`` (special) and ``[SEG]`` (normal) and make sure a pad exists.

    ``[SEG]`` is a normal token so that decoding with ``skip_special_tokens=True`` keeps it. A tokenizer without a
    pad token gets ``unk`` (Llama-2) or else ``eos`` (Llama-3, Qwen) as its pad. Calling it twice adds nothing.

    Returns:
        how many tokens were added.
    """
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    added += tokenizer.add_tokens([SEG_TOKEN], special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no pad, unk or eos token to pad batches with")
    return added


@torch.no_grad()
def resize_with_mean_init(llm: PreTrainedModel, vocab_size: int) -> int:
    """Resize input (and untied output) embeddings to ``vocab_size``; new rows start at the mean of the old rows.

    The mean keeps new tokens' logits and inputs in the range the model already produces, so training starts
    without a spike. Returns the number of rows added.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    if vocab_size == old:
        return 0
    llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    added = vocab_size - old
    if added > 0:
        matrices = [llm.get_input_embeddings().weight]
        output = llm.get_output_embeddings()
        if output is not None and output.weight is not matrices[0]:
            matrices.append(output.weight)
        for weight in matrices:
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
    return added


class LaMed(nn.Module):
    """Vision encoder → perceiver → LLM, with image features placed at the ``<im_patch>`` positions.

    Args:
        vision_encoder: the 3D ViT; its patch tokens (CLS dropped) feed the perceiver.
        perceiver: maps (B, patches, vit width) to (B, ``num_tokens``, LLM width).
        llm: a Hugging Face causal LM whose vocabulary already holds the LaMed tokens.
        image_token_id: the id of ``<im_patch>``.
    """

    def __init__(
        self, vision_encoder: VisionTransformer3D, perceiver: SpatialPoolingPerceiver, llm: PreTrainedModel,
        image_token_id: int,
    ) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.perceiver = perceiver
        self.llm = llm
        self.image_token_id = int(image_token_id)

    @property
    def num_image_tokens(self) -> int:
        return self.perceiver.num_tokens

    def encode_images(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) → (B, ``num_image_tokens``, LLM width) in the embedding dtype."""
        features = self.perceiver(self.vision_encoder.patch_features(image))
        return features.to(self.llm.get_input_embeddings().weight.dtype)

    def embed(self, input_ids: torch.Tensor, image: torch.Tensor | None, packed: bool = False) -> torch.Tensor:
        """Token embeddings with every sample's ``<im_patch>`` rows replaced by its image features.

        Images are used in the order their placeholder blocks appear row by row; with ``packed`` a row may hold
        several samples (see :mod:`~m3d_components.models.packing`) and takes as many images, in order, as it holds
        blocks.

        Raises:
            ValueError: when a sample does not hold exactly ``num_image_tokens`` placeholders (a prompt built for
                another perceiver, or image tokens cut off by truncation), or placeholders come without an image.
        """
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids)
        counts = is_image.sum(dim=1)
        if image is None:
            if bool(counts.any()):
                raise ValueError(f"the prompt holds {IMAGE_TOKEN} placeholders but no image was given")
            return embeds
        if packed:  # each row holds whole placeholder blocks, one per image, and every image is used
            wrong = (counts.remainder(self.num_image_tokens) != 0).nonzero().flatten().tolist()
            if not wrong and int(counts.sum()) != image.shape[0] * self.num_image_tokens:
                raise ValueError(f"{image.shape[0]} images for {input_ids.shape[0]} packed rows holding "
                                 f"{int(counts.sum()) // self.num_image_tokens} image placeholder blocks")
        else:
            if image.shape[0] != input_ids.shape[0]:
                raise ValueError(f"{image.shape[0]} images for {input_ids.shape[0]} prompts")
            wrong = (counts != self.num_image_tokens).nonzero().flatten().tolist()
        if wrong:
            raise ValueError(
                f"sample(s) {wrong} hold {counts[wrong].tolist()} {IMAGE_TOKEN} tokens; the perceiver gives "
                f"{self.num_image_tokens} per image (was the prompt built for another configuration or truncated?)"
            )
        features = self.encode_images(image).to(embeds.dtype)
        return embeds.masked_scatter(is_image.unsqueeze(-1), features)

    def forward(
        self,
        image: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **llm_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Causal-LM forward on the spliced embeddings; ``labels`` (−100 = ignored) give the mean token loss.

        With labels, only the positions that predict a supervised token reach the LM head (through transformers'
        boolean ``logits_to_keep``): image tokens, prompt and padding never become vocabulary-sized logits, which
        saves the LM head's FLOPs and the logits' memory for most of the sequence. The loss equals the causal-LM
        loss over the full logits (tested).

        Returns:
            ``{"logits": …}``: (B, L, V) without labels; with labels, ``"loss"`` and the logits of the supervised
            positions only, (N, V) in row-major order (those predicting ``labels[:, 1:][labels[:, 1:] != -100]``);
            plus ``"hidden_states"`` (the last layer's, (B, L, H)) when ``output_hidden_states=True`` is passed.
        """
        packed = is_packed(attention_mask, llm_kwargs.get("position_ids"))
        embeds = self.embed(input_ids, image, packed)
        if labels is None:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)
            result = {"logits": out.logits}
        else:
            predicts = F.pad(labels[:, 1:] != -100, (0, 1), value=False)
            llm_kwargs.setdefault("use_cache", False)  # training builds no KV cache (packed rows need none)
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=predicts, **llm_kwargs)
            targets = labels[:, 1:][predicts[:, :-1]]
            result = {"logits": out.logits, "loss": F.cross_entropy(out.logits.float(), targets)}
        if out.hidden_states is not None:
            result["hidden_states"] = out.hidden_states[-1]
        return result

    @torch.no_grad()
    def generate(
        self,
        image: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int = 256,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Batched, KV-cached generation from left-padded prompts; greedy unless sampling is asked for.

        The attention mask is passed through (the released code dropped it, so padded batches attended to
        padding). Returns only the new tokens, (B, ≤ max_new_tokens), padded with the pad id after EOS.
        """
        if attention_mask is None:
            raise ValueError("generate needs the prompts' attention mask (left-padded batch)")
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("prompts must be left-padded for generation (the last position is padding)")
        limit = getattr(self.llm.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
            raise ValueError(
                f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the LLM context "
                f"of {limit} positions"
            )
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self.llm.config.pad_token_id)
        return self.llm.generate(
            inputs_embeds=self.embed(input_ids, image),
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            use_cache=True,
            **generate_kwargs,
        )


def lamed_tokenizer(llm_path: str | os.PathLike, model_max_length: int | None = None) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer (local folder) with the LaMed tokens added; the same on every call."""
    tokenizer = load_tokenizer(resolve_local_model(llm_path, "LLM"))
    add_lamed_tokens(tokenizer)
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def build_lamed(
    vit_config: ViTConfig,
    llm_path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    *,
    vision_weights: str | os.PathLike | None = None,
    pooling: str = "spatial",
    pooling_size: int = 2,
    projector_type: str = "mlp",
    projector_layers: int = 2,
    llm_dtype: str | None = None,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> LaMed:
    """Assemble LaMed from a ViT config (+ optional CLIP-pretrained weights) and a local causal LM.

    The LLM vocabulary is resized to ``len(tokenizer)`` with mean-initialised new rows. ``llm_dtype`` ("bfloat16",
    "float32" or None for the checkpoint's own) sets the LLM weights' dtype; trained parts are upcast to float32 by
    :func:`~m3d_components.models.trainable.prepare_training`.
    """
    vision = VisionTransformer3D(vit_config)
    image_tokens = pooled_token_count(vision.grid_size, pooling, pooling_size)  # a bad setting fails before the LLM
    if image_tokens >= tokenizer.model_max_length:
        raise ValueError(f"max_length {tokenizer.model_max_length} leaves no room for the {image_tokens} image tokens "
                         f"(patch grid {tuple(vision.grid_size)} pooled by {pooling_size}): raise max_length")
    if vision_weights:
        load_vit_weights(vision, vision_weights)
        logger.info("loaded vision encoder weights from %s", vision_weights)
    dtype = getattr(torch, llm_dtype) if llm_dtype else None
    llm = load_causal_lm(llm_path, dtype=dtype, attn_implementation=attn_implementation)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise ValueError("the tokenizer lacks the LaMed tokens; build it with lamed_tokenizer()")
    resize_with_mean_init(llm, len(tokenizer))
    llm.config.pad_token_id = tokenizer.pad_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    perceiver = SpatialPoolingPerceiver(
        vit_config.hidden_size, llm.config.hidden_size, vision.grid_size, pooling=pooling, pooling_size=pooling_size,
        layer_type=projector_type, num_layers=projector_layers,
    )
    return LaMed(vision, perceiver, llm, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
