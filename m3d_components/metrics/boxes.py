"""3D box overlap for referring expression comprehension (boxes ``[d0, h0, w0, d1, h1, w1]``, any common unit)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["box_iou", "enclosing_overlap"]


def _volume(box: Sequence[float]) -> float:
    return max(box[3] - box[0], 0.0) * max(box[4] - box[1], 0.0) * max(box[5] - box[2], 0.0)


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    sides = [min(a[i + 3], b[i + 3]) - max(a[i], b[i]) for i in range(3)]
    return 0.0 if min(sides) <= 0 else sides[0] * sides[1] * sides[2]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two axis-aligned 3D boxes (0 for disjoint or degenerate boxes)."""
    if len(a) != 6 or len(b) != 6:
        raise ValueError(f"boxes need 6 numbers, got {list(a)} and {list(b)}")
    inter = _intersection(a, b)
    union = _volume(a) + _volume(b) - inter
    return inter / union if union > 0 else 0.0


def enclosing_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """The published benchmark's "IoU": intersection over the smallest box enclosing both (≤ the true IoU).

    Kept only as a parity column next to :func:`box_iou`; do not report it as IoU.
    """
    inter = _intersection(a, b)
    hull = [min(a[i], b[i]) for i in range(3)] + [max(a[i + 3], b[i + 3]) for i in range(3)]
    return inter / (_volume(hull) + 1e-6)
