"""Optimizer and schedule: AdamW with weight decay on matrices only, linear warm-up then cosine decay."""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["adamw", "warmup_cosine"]

logger = logging.getLogger(__name__)


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, decaying only those with 2+ dimensions.

    Biases, norms, embeddings' scalars and the CLIP log-temperature are not decayed (decaying the temperature pulls
    it towards exp(0) = 1 for no reason). The fused kernel is used when every parameter is on CUDA.
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    fused = all(p.is_cuda for p in params)
    logger.info(
        "AdamW: %d decayed tensors (%d params), %d not decayed (%d params), fused=%s",
        len(decay), sum(p.numel() for p in decay), len(no_decay), sum(p.numel() for p in no_decay), fused,
    )
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_ratio: float = 0.03
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's schedule, stepped once per iteration (``LrScheduleHandler(epoch_level=False)``)."""
    from transformers import get_cosine_schedule_with_warmup

    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    total = max(1, int(epochs) * int(steps_per_epoch))
    return get_cosine_schedule_with_warmup(optimizer, int(round(warmup_ratio * total)), total)
