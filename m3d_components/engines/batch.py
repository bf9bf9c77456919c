"""Batch preparation for MONAI engines: image as the network input, text tensors as keyword arguments.

MONAI's ``SupervisedTrainer`` calls ``network(inputs, *args, **kwargs)`` with what a ``PrepareBatch`` returns, so one
class covers CLIP (``input_ids``, ``attention_mask``) and LaMed (plus ``labels`` and segmentation targets).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.engines import PrepareBatch

from m3d_components.data.transforms import AUGMENTATION_KEY, apply_augmentation

__all__ = ["PrepareImageTextBatch", "loss_from_output", "loss_value"]


class PrepareImageTextBatch(PrepareBatch):
    """Move a collated batch to ``device``; return ``(image, None, (), {key: tensor})``.

    When the batch holds ``augmentation`` (samples from ``train_transforms(on_device=True)``), the moved image gets
    those draws there (:func:`~m3d_components.data.transforms.apply_augmentation`), so the GPU rather than the
    DataLoader workers rotates, flips and rescales it. Evaluation batches never hold the key and pass unchanged.

    Args:
        keys: batch keys passed to the network as keyword arguments.
        image_key: the batch key of the (B, C, D, H, W) image.
    """

    def __init__(self, keys: Sequence[str], image_key: str = "image") -> None:
        self.keys = tuple(keys)
        self.image_key = image_key

    @staticmethod
    def _move(value: torch.Tensor, device, non_blocking: bool) -> torch.Tensor:
        return value.to(device=device, non_blocking=non_blocking)

    def __call__(self, batchdata: dict[str, Any], device=None, non_blocking: bool = False, **kwargs):
        missing = [k for k in (self.image_key, *self.keys) if k not in batchdata]
        if missing:
            raise KeyError(f"batch lacks key(s) {missing}; it has {sorted(batchdata)}")
        image = self._move(batchdata[self.image_key], device, non_blocking)
        if AUGMENTATION_KEY in batchdata:
            image = apply_augmentation(image, batchdata[AUGMENTATION_KEY])
        extra = {k: self._move(batchdata[k], device, non_blocking) for k in self.keys}
        return image, None, (), extra


def loss_from_output(pred: dict[str, torch.Tensor], _target: Any = None) -> torch.Tensor:
    """The trainer's ``loss_function`` for networks that compute their own loss."""
    return pred["loss"]


def loss_value(output: dict[str, Any]) -> float:
    """The iteration loss as a float, for handlers' ``output_transform`` (training output is not decollated)."""
    return float(output["loss"].detach())
