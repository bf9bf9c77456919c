"""LaMed with ``[SEG]``-prompted segmentation: one model, one loss (language modelling + Dice + BCE).

The hidden state that predicts ``[SEG]`` is projected to a prompt for :class:`PromptableSegmenter`, which segments
the same canonical volume the vision tower saw. Only samples whose answer asks for a mask *and* that have one get
the mask losses; a negative ("there is no spleen in this scan") trains the refusal through the language loss alone,
so the model learns not to emit ``[SEG]`` for an absent target instead of being pushed towards an empty mask.

:class:`LaMedSeg` *is* a :class:`LaMed` (same parameter names), so a lamed_instruct checkpoint loads into it as it
is and the trainable-part and LoRA machinery of :mod:`m3d_components.models.trainable` applies unchanged.
"""

from __future__ import annotations

import logging
import os

import torch
from monai.losses import DiceLoss
from torch import nn

from m3d_components.data.tokens import SEG_TOKEN
from m3d_components.models.lamed import LaMed, build_lamed
from m3d_components.models.packing import is_packed
from m3d_components.models.segmentation import (
    PromptableSegmenter,
    SegmenterConfig,
    SegPromptProjector,
    load_segmenter_weights,
    packed_samples,
    seg_token_states,
)
from m3d_components.models.vision import ViTConfig, load_vit_weights

__all__ = ["LaMedSeg", "build_lamed_seg"]

logger = logging.getLogger(__name__)


class LaMedSeg(LaMed):
    """LaMed + segmentation module + the ``[SEG]`` prompt projector.

    Args:
        vision_encoder, perceiver, llm, image_token_id: as for :class:`LaMed` (the vocabulary holds ``[SEG]``).
        segmenter: the promptable segmentation module; its input size must be the volumes' size.
        seg_token_id: the id of ``[SEG]``.
        dice_weight, bce_weight: weights of the mask losses next to the language loss (1 and 1 as published).
    """

    def __init__(
        self, vision_encoder, perceiver, llm, image_token_id: int, segmenter: PromptableSegmenter, seg_token_id: int,
        dice_weight: float = 1.0, bce_weight: float = 1.0,
    ) -> None:
        super().__init__(vision_encoder, perceiver, llm, image_token_id)
        self.segmenter = segmenter
        self.seg_projector = SegPromptProjector(llm.config.hidden_size, segmenter.prompt_dim)
        self.seg_token_id = int(seg_token_id)
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        # The published Dice: per sample, on probabilities, smoothed by 1 in the denominator only.
        self.dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1.0, reduction="mean")
        self.bce = nn.BCEWithLogitsLoss()

    @classmethod
    def from_lamed(cls, lamed: LaMed, segmenter: PromptableSegmenter, seg_token_id: int, **kwargs) -> LaMedSeg:
        return cls(lamed.vision_encoder, lamed.perceiver, lamed.llm, lamed.image_token_id, segmenter, seg_token_id,
                   **kwargs)

    def _masks(self, image: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        prompt = self.seg_projector(states.to(self.seg_projector[0].weight.dtype))
        return self.segmenter(image, prompt)

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        seg: torch.Tensor | None = None,
        **llm_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Language loss, plus Dice + BCE on the samples with ``[SEG]`` in their tokens and a non-empty ``seg``.

        Args:
            image: (B, 1, D, H, W) volumes.
            input_ids, attention_mask, labels: as for :class:`LaMed` (the answer, with ``[SEG]``, is in the ids);
                packed rows (``position_ids`` and no mask) may hold several samples, each with its image block.
            seg: (B, 1, D, H, W) target masks, one per image (all-zero for samples without one), or None.

        Returns:
            ``{"loss", "lm_loss", "logits"}`` and, when masks were predicted, ``"seg_loss"``, ``"mask_logits"`` and
            ``"seg_index"`` (the batch rows they belong to).
        """
        if seg is not None:
            llm_kwargs["output_hidden_states"] = True
        out = super().forward(image, input_ids, attention_mask, labels, **llm_kwargs)
        result = {"logits": out["logits"]}
        if labels is not None:
            result["loss"] = result["lm_loss"] = out["loss"]
        if seg is None:
            return result
        if seg.shape[0] != image.shape[0] or seg.shape[2:] != image.shape[2:]:
            raise ValueError(f"seg {tuple(seg.shape)} does not match the images {tuple(image.shape)}")
        samples = None
        if is_packed(attention_mask, llm_kwargs.get("position_ids")):
            samples = packed_samples(input_ids, llm_kwargs["position_ids"], self.image_token_id)
        states, found = seg_token_states(out["hidden_states"], input_ids, self.seg_token_id, attention_mask, samples,
                                         image.shape[0])
        use = found & seg.flatten(1).any(dim=1)
        if not bool(use.any()):
            return result
        logits = self._masks(image[use], states[use])
        target = seg[use].to(logits.dtype)
        seg_loss = self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)
        result.update(seg_loss=seg_loss, mask_logits=logits, seg_index=use.nonzero().flatten())
        if labels is not None:
            result["loss"] = result["loss"] + seg_loss
        return result

    @torch.no_grad()
    def segment(
        self, image: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: torch.Tensor,
        eos_token_id: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for generated answers: one forward pass over prompt + answer finds the state before each ``[SEG]``.

        Positions are counted from each sample's first real token, as in generation, so the states equal those the
        answer was generated from. Tokens after a sample's EOS are ignored. A ``[SEG]`` as the first generated token
        counts (its preceding state is the prompt's last one; the published code missed it).

        Returns:
            (B, 1, D, H, W) mask probabilities (zeros where no ``[SEG]`` was generated) and (B,) bool: which samples
            asked for a mask.
        """
        answer_mask = torch.ones_like(new_tokens, dtype=prompt_mask.dtype)
        if eos_token_id is not None:
            ended = (new_tokens == eos_token_id).long().cumsum(dim=1)
            answer_mask = (ended - (new_tokens == eos_token_id).long() == 0).to(prompt_mask.dtype)
        ids = torch.cat([prompt_ids, new_tokens], dim=1)
        mask = torch.cat([prompt_mask, answer_mask], dim=1)
        probs = torch.zeros((image.shape[0], 1, *image.shape[2:]), dtype=torch.float32, device=image.device)
        asked = ((new_tokens == self.seg_token_id) & answer_mask.bool()).any(dim=1)
        if not bool(asked.any()):
            return probs, asked
        rows = asked.nonzero().flatten()
        positions = (mask[rows].cumsum(dim=1) - 1).clamp(min=0)
        out = LaMed.forward(self, image[rows], ids[rows], mask[rows], position_ids=positions,
                            output_hidden_states=True)
        # only [SEG] tokens of the answer count (a literal "[SEG]" typed into the question does not)
        in_answer = torch.cat([torch.zeros_like(prompt_mask[rows]), answer_mask[rows]], dim=1)
        states, found = seg_token_states(out["hidden_states"], ids[rows], self.seg_token_id, in_answer)
        probs[rows[found]] = torch.sigmoid(self._masks(image[rows[found]], states[found]).float())
        asked[rows[~found]] = False
        return probs, asked


def build_lamed_seg(
    vit_config: ViTConfig,
    llm_path: str | os.PathLike,
    tokenizer,
    segmenter_config: SegmenterConfig,
    *,
    segmenter_weights: str | os.PathLike | None = None,
    segmenter_vit_weights: str | os.PathLike | None = None,
    **lamed_kwargs,
) -> LaMedSeg:
    """LaMed (see :func:`~m3d_components.models.lamed.build_lamed`) + a segmentation module.

    Args:
        segmenter_config: shapes of the segmentation module; its ViT must take the same volumes as LaMed's.
        segmenter_weights: released SegVol weights (``pytorch_model.bin``, converted on load) or a saved
            :class:`PromptableSegmenter` state dict.
        segmenter_vit_weights: weights for the segmentation image encoder alone (e.g. the clip_pretrain export;
            its CLS token is dropped) when no SegVol checkpoint is used.
    """
    if tuple(segmenter_config.vit.img_size) != tuple(vit_config.img_size):
        raise ValueError(
            f"the segmentation encoder takes {tuple(segmenter_config.vit.img_size)} volumes but LaMed's takes "
            f"{tuple(vit_config.img_size)}: set both image sizes alike"
        )
    segmenter = PromptableSegmenter(segmenter_config)  # before the LLM, so that a wrong weight path fails at once
    if segmenter_weights:
        load_segmenter_weights(segmenter, segmenter_weights)
    elif segmenter_vit_weights:
        load_vit_weights(segmenter.image_encoder, segmenter_vit_weights)
        logger.info("segmentation image encoder initialised from %s", segmenter_vit_weights)
    lamed = build_lamed(vit_config, llm_path, tokenizer, **lamed_kwargs)
    return LaMedSeg.from_lamed(lamed, segmenter, tokenizer.convert_tokens_to_ids(SEG_TOKEN))
