"""3D boxes: from masks, to and from the text form the LLM reads and writes.

A box is ``[d0, h0, w0, d1, h1, w1]``: the min and max voxel index of the object along each axis. In text it is
normalised by the volume size (dividing by D, H, W — not size−1 — as in M3D, so the max stays below 1), rounded to
3 decimals, written as a Python list and wrapped in ``<bx_start>``/``<bx_end>``.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from m3d_components.data.tokens import BOX_END, BOX_START

__all__ = ["mask_to_box", "mask_box", "normalize_box", "denormalize_box", "format_box", "parse_boxes"]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(r"\[\s*" + r"\s*,\s*".join([f"({_NUMBER})"] * 6) + r"\s*\]")


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    """Voxel box of the foreground of a (D, H, W) or (1, D, H, W) mask; None when the mask is empty."""
    m = np.asarray(mask)
    if m.ndim == 4:
        m = m[0]
    if m.ndim != 3:
        raise ValueError(f"mask must be (D, H, W) or (1, D, H, W), got shape {tuple(np.shape(mask))}")
    idx = [np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(i.size == 0 for i in idx):
        return None
    return tuple(int(i[0]) for i in idx) + tuple(int(i[-1]) for i in idx)  # type: ignore[return-value]


def mask_box(mask: np.ndarray) -> list[float] | None:
    """The normalised box of a (1, D, H, W) or (D, H, W) mask, as written in text; None when the mask is empty."""
    voxel_box = mask_to_box(mask)
    return normalize_box(voxel_box, np.shape(mask)[-3:]) if voxel_box is not None else None


def normalize_box(box: Sequence[float], shape: Sequence[int]) -> list[float]:
    """Voxel box → fractions of the (D, H, W) ``shape``, rounded to 3 decimals."""
    if len(box) != 6 or len(shape) != 3:
        raise ValueError(f"expected a 6-number box and a (D, H, W) shape, got {list(box)} and {list(shape)}")
    size = list(shape) * 2
    return [round(float(b) / s, 3) for b, s in zip(box, size)]


def denormalize_box(box: Sequence[float], shape: Sequence[int]) -> list[int]:
    """Normalised box → voxel indices clipped to the (D, H, W) ``shape`` (inverse of :func:`normalize_box`)."""
    size = list(shape) * 2
    return [int(np.clip(round(float(b) * s), 0, s - 1)) for b, s in zip(box, size)]


def format_box(box: Sequence[float]) -> str:
    """Normalised box → ``<bx_start>[0.125, 0.32, ...]<bx_end>`` (Python float repr, as published)."""
    return f"{BOX_START}{[round(float(b), 3) for b in box]}{BOX_END}"


def parse_boxes(text: str) -> list[list[float]]:
    """Every ``[n, n, n, n, n, n]`` in ``text`` (box markers optional), as lists of floats, in order.

    Tolerant of spacing, signs, missing leading zeros and exponents, so it reads model output as well as our own.
    """
    return [[float(v) for v in m.groups()] for m in _BOX_RE.finditer(text)]
