"""LaMed with ``[SEG]``-prompted segmentation: one model, one loss (language modelling + Dice + BCE).

The hidden state that predicts ``[SEG]`` is projected to a prompt for :class:`PromptableSegmenter`, which segments
the same canonical volume the vision tower saw. Only samples whose answer asks for a mask *and* that have one get
the mask losses; a negative ("there is no spleen in this scan") trains the refusal through the language loss alone,
so the model learns not to emit ``[SEG]`` for an absent target instead of being pushed towards an empty mask.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from m3d_components.models.lamed import LaMed
from m3d_components.models.segmentation import PromptableSegmenter, SegPromptProjector, seg_token_states

__all__ = ["LaMedSeg"]


class LaMedSeg(nn.Module):
    """LaMed + segmentation module + the ``[SEG]`` prompt projector.

    Args:
        lamed: the multimodal LLM (its vocabulary holds ``[SEG]``).
        segmenter: the promptable segmentation module; its input size must be the volumes' size.
        seg_token_id: the id of ``[SEG]``.
        dice_weight, bce_weight: weights of the mask losses next to the language loss (1 and 1 as published).
    """

    def __init__(
        self, lamed: LaMed, segmenter: PromptableSegmenter, seg_token_id: int, dice_weight: float = 1.0,
        bce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.lamed = lamed
        self.segmenter = segmenter
        self.seg_projector = SegPromptProjector(lamed.llm.config.hidden_size, segmenter.prompt_dim)
        self.seg_token_id = int(seg_token_id)
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        # The published Dice: per sample, on probabilities, smoothed by 1 in the denominator only.
        self.dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1.0, reduction="mean")
        self.bce = nn.BCEWithLogitsLoss()

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        seg: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Language loss, plus Dice + BCE on the samples with ``[SEG]`` in their tokens and a non-empty ``seg``.

        Args:
            image: (B, 1, D, H, W) volumes.
            input_ids, attention_mask, labels: as for :class:`LaMed` (the answer, with ``[SEG]``, is in the ids).
            seg: (B, 1, D, H, W) target masks (all-zero for samples without one), or None.

        Returns:
            ``{"loss", "lm_loss", "logits"}`` and, when masks were predicted, ``"seg_loss"``, ``"mask_logits"`` and
            ``"seg_index"`` (the batch rows they belong to).
        """
        out = self.lamed(image, input_ids, attention_mask, labels, output_hidden_states=seg is not None)
        result = {"logits": out["logits"]}
        if labels is not None:
            result["loss"] = result["lm_loss"] = out["loss"]
        if seg is None:
            return result
        if seg.shape[0] != image.shape[0] or seg.shape[2:] != image.shape[2:]:
            raise ValueError(f"seg {tuple(seg.shape)} does not match the images {tuple(image.shape)}")
        states, found = seg_token_states(out["hidden_states"], input_ids, self.seg_token_id, attention_mask)
        use = found & seg.flatten(1).any(dim=1)
        if not bool(use.any()):
            return result
        prompt = self.seg_projector(states[use].to(self.seg_projector[0].weight.dtype))
        logits = self.segmenter(image[use], prompt)
        target = seg[use].to(logits.dtype)
        seg_loss = self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)
        result.update(seg_loss=seg_loss, mask_logits=logits, seg_index=use.nonzero().flatten())
        if labels is not None:
            result["loss"] = result["loss"] + seg_loss
        return result
