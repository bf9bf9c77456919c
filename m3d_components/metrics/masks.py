"""Mask overlap for semantic / referring segmentation, computed by MONAI (one sample at a time or batched).

``hard_dice`` is the Dice of the thresholded mask — the headline ``ss/dice`` and ``res/dice``. ``soft_dice`` is the
published benchmark's score on probabilities, 2·Σpg / (Σp + Σg + 1), kept as a parity column.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from monai.metrics import compute_dice

__all__ = ["hard_dice", "soft_dice"]

_SOFT = DiceLoss(smooth_nr=0.0, smooth_dr=1.0, reduction="none")


def _batched(x: torch.Tensor) -> torch.Tensor:
    """(D, H, W) or (1, D, H, W) → (1, 1, D, H, W); (B, 1, D, H, W) as is."""
    while x.ndim < 5:
        x = x[None]
    return x


def hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of binary masks, (B,); two empty masks score 1, an empty prediction of a present target 0."""
    pred, target = _batched(pred).float(), _batched(target).float()
    return compute_dice(pred, target, include_background=True, ignore_empty=False)[:, 0]


def soft_dice(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft Dice on probabilities with smoothing 1 in the denominator (the published protocol), (B,)."""
    probs, target = _batched(probs).float(), _batched(target).float()
    return 1.0 - _SOFT(probs, target).flatten(1).mean(dim=1)
