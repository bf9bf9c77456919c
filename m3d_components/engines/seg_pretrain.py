"""Class-prompted pre-training of the promptable segmenter: the skill SegVol's released weights bring to M3D.

M3D starts its segmentation module from SegVol, already able to segment whatever class its prompt names. Where no
SegVol checkpoint fits (the demo's small volumes), :func:`pretrain_segmenter` teaches a segmenter that skill on a
corpus's training masks: one learned prompt vector per class stands in for SegVol's text prompts and is dropped
afterwards, and lamed_seg then only has to learn to send the LLM's ``[SEG]`` state where those vectors pointed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.losses import DiceLoss
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from m3d_components.data.masks import load_class_mask
from m3d_components.data.volume import load_volume
from m3d_components.models.segmentation import PromptableSegmenter

__all__ = ["pretrain_segmenter"]

logger = logging.getLogger(__name__)


def pretrain_segmenter(
    segmenter: PromptableSegmenter, records: Sequence[dict], steps: int, batch_size: int = 16,
    learning_rate: float = 1e-3, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Train ``segmenter`` in place to segment the class its prompt names, with the loss lamed_seg uses (Dice + BCE).

    Args:
        records: per-class seg records (``image``, ``label``, ``class_name``; e.g. from ``read_seg_split``); only
            those with a non-empty mask are drawn, ``batch_size`` at random per step.
        steps: optimiser steps (AdamW, cosine schedule with 5 % warm-up).

    Returns:
        class name → its learned prompt vector (the segmenter is left in eval mode).
    """
    shape = tuple(segmenter.config.vit.img_size)
    positives = [r for r in records if load_class_mask(r["label"], (1, *shape)).any()]
    if not positives:
        raise ValueError("no record with a non-empty mask to pre-train the segmenter on")
    classes = sorted({r["class_name"] for r in positives})
    with torch.random.fork_rng():  # seeded prompts, the caller's random state untouched
        torch.manual_seed(seed)
        prompts = nn.Embedding(len(classes), segmenter.prompt_dim)
    class_ids = torch.tensor([classes.index(r["class_name"]) for r in positives])
    generator = torch.Generator().manual_seed(seed)
    parameters = [*segmenter.parameters(), *prompts.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1.0)
    bce = nn.BCEWithLogitsLoss()
    segmenter.train()
    logger.info("pre-training the segmenter: %d masks, %d classes, %d steps", len(positives), len(classes), steps)
    for _ in range(steps):
        picks = torch.randint(len(positives), (batch_size,), generator=generator)
        image = torch.from_numpy(np.stack([load_volume(positives[i]["image"], (1, *shape)) for i in picks.tolist()]))
        target = torch.from_numpy(np.stack([load_class_mask(positives[i]["label"], (1, *shape))
                                            for i in picks.tolist()])).float()
        logits = segmenter(image, prompts(class_ids[picks]))
        (dice(logits, target) + bce(logits, target)).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    segmenter.eval()
    return {name: prompts.weight[i].detach().clone() for i, name in enumerate(classes)}
