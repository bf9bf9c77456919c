"""The canonical volume: reading, checking, min–max scaling and compact caches.

Every model consumes a float32 array of shape (1, D, H, W) = (C, depth/slices, height, width) with intensities in
[0, 1]; the paper uses (1, 32, 256, 256). On disk a volume is a ``.npy`` file in float32 (as published), or a compact
cache in float16 or uint8 (uint8 stores round(255·v)); caches are memory-mapped and converted on read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from m3d_components.data.errors import DataError

__all__ = [
    "CANONICAL_SHAPE",
    "CACHE_DTYPES",
    "check_volume",
    "load_volume",
    "minmax_normalize",
    "save_volume",
]

CANONICAL_SHAPE = (1, 32, 256, 256)
CACHE_DTYPES = ("float32", "float16", "uint8")
_RANGE_TOLERANCE = 1e-3


def minmax_normalize(x: np.ndarray, source: str = "volume") -> np.ndarray:
    """Scale ``x`` to [0, 1] by its own minimum and maximum.

    Raises:
        DataError: when ``x`` holds NaN/inf or is constant (the scaling would divide by zero).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise DataError(source, "volume is empty")
    if not np.isfinite(x).all():
        raise DataError(source, f"volume holds {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-8:
        raise DataError(source, f"volume is constant (all values {lo:g}); min–max scaling is undefined")
    return (x - lo) / (hi - lo)


def check_volume(x: np.ndarray, source: str, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Check that ``x`` is a canonical volume: (1, D, H, W), finite, in [0, 1], not constant.

    Args:
        x: the array to check.
        source: file name used in error messages.
        expected_shape: the full expected shape, e.g. ``(1, 32, 256, 256)``; None accepts any (1, D, H, W).

    Returns:
        ``x`` as float32.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise DataError(source, f"expected a (1, D, H, W) volume, got shape {tuple(x.shape)}")
    if expected_shape is not None and tuple(x.shape) != tuple(expected_shape):
        raise DataError(source, f"wrong shape {tuple(x.shape)}, expected {tuple(expected_shape)}")
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(source, f"volume holds {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise DataError(
            source,
            f"intensities span [{lo:g}, {hi:g}], expected [0, 1]; convert raw scans with `m3d prepare volume`",
        )
    if hi - lo <= 1e-8:
        raise DataError(source, f"volume is constant (all values {lo:g})")
    return x


def load_volume(path: str | os.PathLike, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a canonical volume from ``.npy`` (float32, float16 or uint8 cache) and check it.

    Raises:
        DataError: missing or unreadable file, wrong dtype or shape, non-finite, out-of-range or constant values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "volume file not found")
    try:
        raw = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # numpy raises several types for truncated or foreign files
        raise DataError(str(path), f"cannot read as .npy ({type(err).__name__}: {err})") from err
    if raw.dtype == np.uint8:
        x = np.asarray(raw, dtype=np.float32) / 255.0
    elif raw.dtype in (np.float32, np.float16, np.float64):
        x = np.array(raw, dtype=np.float32)  # a writable in-memory copy of the memory map
    else:
        raise DataError(str(path), f"unsupported dtype {raw.dtype}; expected float32, float16 or uint8")
    return check_volume(x, str(path), expected_shape)


def save_volume(path: str | os.PathLike, x: np.ndarray, dtype: str = "float32") -> Path:
    """Write a canonical volume as ``.npy`` in ``dtype`` (float32, or a float16/uint8 cache); atomic."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
    x = np.asarray(x, dtype=np.float32)
    out = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) if dtype == "uint8" else x.astype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, out)
    os.replace(tmp, path)
    return path
