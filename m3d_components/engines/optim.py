"""Optimizer and schedule: AdamW with weight decay on matrices only, linear warm-up then cosine decay."""

from __future__ import annotations

import logging

import torch
from torch import nn

from m3d_components.models.trainable import canonical_name

__all__ = ["adamw", "warmup_cosine"]

logger = logging.getLogger(__name__)


def adamw(
    model: nn.Module, lr: float, weight_decay: float = 0.0, lr_scales: dict[str, float] | None = None,
    betas=(0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, decaying only those with 2+ dimensions.

    Biases, norms, embeddings' scalars and the CLIP log-temperature are not decayed (decaying the temperature pulls
    it towards exp(0) = 1 for no reason). ``lr_scales`` maps a parameter-name prefix to a learning-rate factor
    (e.g. ``{"vision_encoder.": 0.1}`` keeps a pre-trained encoder from being pulled apart by a fresh head's
    gradients); names are matched without peft's wrapper prefix (``llm.model.embed_tokens.``), and schedulers scale
    every group alike. The fused kernel is used when every parameter is on CUDA.
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    named = [(n, p) for n, p in _unwrap(model).named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    scales = dict(lr_scales or {})
    if any(s <= 0 for s in scales.values()):
        raise ValueError(f"lr_scales must be positive, got {scales}")
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in named:
        name = canonical_name(name)
        scale = next((s for prefix, s in scales.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((scale, param.ndim >= 2), []).append(param)
    fused = all(p.is_cuda for _, p in named)
    for (scale, decayed), params in sorted(groups.items()):
        logger.info("AdamW group: lr x%g, decay=%s, %d tensors (%d params)", scale, decayed, len(params),
                    sum(p.numel() for p in params))
    param_groups = [
        {"params": params, "lr": lr * scale, "weight_decay": weight_decay if decayed else 0.0}
        for (scale, decayed), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=fused)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def warmup_cosine(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_ratio: float = 0.03
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's schedule, stepped once per iteration (``LrScheduleHandler(epoch_level=False)``)."""
    from transformers import get_cosine_schedule_with_warmup

    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    total = max(1, int(epochs) * int(steps_per_epoch))
    return get_cosine_schedule_with_warmup(optimizer, int(round(warmup_ratio * total)), total)
