"""Mask files of M3D-Seg and M3D-RefSeg.

Two layouts are published:

* the raw release: one SciPy CSR matrix per case, saved with ``save_npz``, shape (C, X·Y·Z), whose dense shape
  is written in the file name, e.g. ``mask_(4, 512, 512, 265).npz``;
* the LaMed-ready layout: one ``masks/mask_<i>.npy`` per class ``i`` (0-based, = label value i+1), a bool
  (1, D, H, W) array when the class is present, or a (1, 1, 1, 1) zero array marking a *negative* sample.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import numpy as np

from m3d_components.data.errors import DataError

__all__ = ["NEGATIVE_SHAPE", "class_index_from_name", "load_class_mask", "load_sparse_mask", "shape_from_name"]

NEGATIVE_SHAPE = (1, 1, 1, 1)
_SHAPE_RE = re.compile(r"\((\s*\d+\s*(?:,\s*\d+\s*)+)\)")
_CLASS_RE = re.compile(r"mask_(\d+)\.npy$")


def shape_from_name(path: str | os.PathLike) -> tuple[int, ...]:
    """The dense shape encoded in a sparse mask's file name, e.g. ``mask_(4, 512, 512, 265).npz`` → (4, 512, 512, 265)."""
    match = _SHAPE_RE.search(Path(path).name)
    if match is None:
        raise DataError(str(path), "sparse mask file name carries no shape like 'mask_(C, X, Y, Z).npz'")
    return tuple(int(v) for v in ast.literal_eval(f"({match.group(1)},)") if v is not None)


def load_sparse_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a raw-release sparse mask as a dense bool array (C, X, Y, Z).

    Raises:
        DataError: missing/unreadable file, no shape in the name, or a matrix that does not match that shape.
    """
    import scipy.sparse

    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "mask file not found")
    shape = shape_from_name(path)
    try:
        matrix = scipy.sparse.load_npz(path)
    except Exception as err:
        raise DataError(str(path), f"cannot read as a sparse .npz matrix ({type(err).__name__}: {err})") from err
    if matrix.shape != (shape[0], int(np.prod(shape[1:]))):
        raise DataError(str(path), f"matrix shape {matrix.shape} does not match the shape {shape} in the file name")
    return matrix.toarray().reshape(shape).astype(bool)


def class_index_from_name(path: str | os.PathLike) -> int:
    """The class index ``i`` of a LaMed-ready ``mask_<i>.npy`` file."""
    match = _CLASS_RE.search(str(path))
    if match is None:
        raise DataError(str(path), "mask file name must look like 'mask_<class index>.npy'")
    return int(match.group(1))


def load_class_mask(path: str | os.PathLike, image_shape: tuple[int, ...]) -> np.ndarray:
    """Read a LaMed-ready per-class mask as bool (1, D, H, W); a negative (1, 1, 1, 1) file gives all False.

    Raises:
        DataError: missing/unreadable file, a shape that is neither the image's nor the negative marker, values
            other than 0/1, or an all-zero full-size mask (ambiguous: negatives use the (1, 1, 1, 1) marker).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "mask file not found")
    try:
        mask = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise DataError(str(path), f"cannot read as .npy ({type(err).__name__}: {err})") from err
    if tuple(mask.shape) == NEGATIVE_SHAPE:
        if np.any(mask):
            raise DataError(str(path), "a (1, 1, 1, 1) negative-sample mask must be zero")
        return np.zeros(image_shape, dtype=bool)
    if tuple(mask.shape) != tuple(image_shape):
        raise DataError(str(path), f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image_shape)}")
    mask = np.asarray(mask)
    if not ((mask == 0) | (mask == 1)).all():  # no sort: np.unique only for the message
        raise DataError(str(path), f"mask is not binary: values {np.unique(mask)[:8].tolist()}")
    foreground = mask > 0
    if not foreground.any():
        raise DataError(str(path), "mask is empty; a class absent from the image is stored as a (1, 1, 1, 1) zero array")
    return foreground
