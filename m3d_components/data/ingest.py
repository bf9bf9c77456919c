"""Own scans → canonical volume, with an exact way back to the scan.

A NIfTI file or a DICOM series is read with MONAI ``LoadImage`` (world coordinates in RAS+ millimetres, as nibabel
uses them), reoriented so that the canonical axes (D, H, W) run superior→inferior, anterior→posterior and patient
right→left (axis codes ``"IPL"``: each letter names the direction an index increases towards), windowed to [0, 1],
cropped to the foreground and resized with true 3D trilinear interpolation.

Every MONAI step updates the affine of the ``MetaTensor`` it returns, so after the last step one matrix,
``canonical_to_source = inv(source_affine) @ canonical_affine``, maps a canonical voxel index to a (fractional)
source voxel index. It is written to a JSON sidecar with the source affine and shape; boxes and masks predicted on
the canonical volume go back to the scan through it (:func:`box_to_source`, :func:`box_to_patient_mm`,
:func:`mask_to_source`, :func:`write_mask_nifti`), and label maps come forward through it (:func:`prepare_mask`).
Voxel indices denote voxel centres; a voxel covers ±0.5 around its index.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PydicomReader, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    CropForeground,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImage,
    LoadImaged,
    MapTransform,
    Orientation,
    Orientationd,
    Resize,
    Resized,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    SpatialCrop,
)
from scipy import ndimage

from m3d_components.data.errors import DataError
from m3d_components.data.volume import CACHE_DTYPES, CANONICAL_SHAPE, check_volume, save_volume

if TYPE_CHECKING:  # pydicom is imported where a DICOM folder is read: the GPU image lacks it (see tests/test_layering)
    from pydicom import Dataset

__all__ = [
    "CANONICAL_AXCODES",
    "CheckScand",
    "HU_AIR_BELOW",
    "PERCENTILES",
    "SIDECAR_FORMAT",
    "WINDOWS",
    "box_to_patient_mm",
    "box_to_source",
    "check_options",
    "check_scan",
    "check_spatial_size",
    "load_sidecar",
    "load_source",
    "mask_to_source",
    "prepare_mask",
    "prepare_volume",
    "scan_transforms",
    "sidecar_path",
    "write_mask_nifti",
]

logger = logging.getLogger(__name__)
HU_AIR_BELOW = -500.0  # a CT in Hounsfield units holds air, about −1000, around and inside the body

CANONICAL_AXCODES = "IPL"
#: CT presets as (width, level) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
#: Lower and upper percentile of the ``"percentile"`` window (for MRI and other uncalibrated intensities).
PERCENTILES = (0.5, 99.5)
SIDECAR_FORMAT = "m3d-ingest/1"

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_AFFINE_TOLERANCE = 1e-3
_SIDECAR_KEYS = ("format", "source", "source_shape", "source_affine", "spatial_size", "canonical_to_source")
#: How many subfolders an error names.
_MAX_LISTED = 5
#: Largest step between neighbouring DICOM slices, as a multiple of the smallest, still taken as even spacing.
_MAX_STEP_RATIO = 1.5
#: DICOM slices closer than this along the slice normal (mm) lie at the same position.
_SAME_POSITION_MM = 1e-3
#: Largest difference between the unit slice normals of slices that are taken as parallel.
_SAME_ORIENTATION = 1e-4


def sidecar_path(out_npy: str | os.PathLike) -> Path:
    """Where :func:`prepare_volume` writes the sidecar of ``out_npy``: the same name with ``.json``."""
    return Path(out_npy).with_suffix(".json")


def _reader_name(src: Path) -> str:
    if src.is_dir() or src.suffix.lower() == ".dcm":
        return "PydicomReader"
    if src.name.lower().endswith(_NIFTI_SUFFIXES):
        return "NibabelReader"
    raise DataError(str(src), "unsupported input; expected a .nii/.nii.gz file, a .dcm file or a DICOM series folder")


@contextmanager
def _tracking_meta() -> Iterator[None]:
    """MONAI transforms only update affines while meta tracking is on; a caller may have switched it off."""
    previous = get_track_meta()
    set_track_meta(True)
    try:
        yield
    finally:
        set_track_meta(previous)


def _visible_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that MONAI's folder reader globs (``*`` skips hidden ones, e.g. macOS ``._`` files)."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def _dicom_header(path: Path) -> Dataset | None:
    """The header of a DICOM image, None for another file (text, DICOMDIR, a report without pixel rows).

    Raises:
        DataError: a truncated or corrupt header, or an enhanced multi-frame image: its position, orientation and
            rescale are kept per frame, which MONAI's reader does not read (it would build an identity affine and
            raw values, a volume that looks right and is not).
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        header = dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:  # no DICM prefix: not a DICOM file
        return None
    except Exception as err:  # a truncated or corrupt header
        raise DataError(str(path), f"cannot read the DICOM header ({type(err).__name__}: {err})") from err
    if "Rows" not in header:
        return None
    if int(header.get("NumberOfFrames", 1) or 1) > 1 and "ImagePositionPatient" not in header:
        raise DataError(
            str(path), "an enhanced multi-frame DICOM (geometry per frame), which is not read here; convert it to "
            "NIfTI first (e.g. dcm2niix) or pass a folder of single-frame slices"
        )
    return header


def _dicom_headers(folder: Path) -> dict[Path, Dataset]:
    """Headers of the DICOM images directly in ``folder`` (see :func:`_dicom_header`)."""
    return {path: header for path in _visible_files(folder) if (header := _dicom_header(path)) is not None}


def _no_dicom_problem(folder: Path) -> str:
    """Names the subfolders holding DICOM files: PACS exports nest each series in folders of their own."""
    from pydicom.misc import is_dicom

    holding = []
    for root, dirs, _ in os.walk(folder):
        dirs.sort()
        if Path(root) != folder and (count := sum(is_dicom(p) for p in _visible_files(Path(root)))):
            holding.append(f"{Path(root).relative_to(folder)} ({count} files)")
    if not holding:
        return "no DICOM image files in the folder"
    more = f" and {len(holding) - _MAX_LISTED} more" if len(holding) > _MAX_LISTED else ""
    return (
        f"no DICOM image files in the folder itself; DICOM files are in its subfolders "
        f"{', '.join(holding[:_MAX_LISTED])}{more}: pass the folder of one series"
    )


def _series_summary(uid: str, headers: Sequence[Dataset]) -> str:
    description = headers[0].get("SeriesDescription")
    named = f" {str(description)!r}" if description else ""
    return f"{uid}{named} ({len(headers)} slices)"


def _slice_normal(header: Dataset) -> np.ndarray:
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def _slice_position(header: Dataset) -> float:
    """Where a slice lies along the slice normal (row direction × column direction), in mm."""
    return float(np.dot(np.asarray(header.ImagePositionPatient, dtype=float), _slice_normal(header)))


def _check_slice_positions(folder: Path, headers: Mapping[Path, Dataset]) -> None:
    """The slices must be parallel, distinct and evenly spaced: MONAI takes the slice step from the outer two."""
    tags = ("ImagePositionPatient", "ImageOrientationPatient")
    lacking = [p.name for p, h in headers.items() if any(tag not in h for tag in tags)]
    if lacking:
        raise DataError(
            str(folder),
            f"{len(lacking)} slice(s) lack ImagePositionPatient or ImageOrientationPatient (e.g. {lacking[0]}), so the "
            "slices cannot be ordered",
        )
    normals = np.array([_slice_normal(h) for h in headers.values()])
    if not np.allclose(normals, normals[0], atol=_SAME_ORIENTATION):
        raise DataError(str(folder), "the slices have different orientations (ImageOrientationPatient)")
    ordered = sorted(headers, key=lambda p: _slice_position(headers[p]))
    positions = np.array([_slice_position(headers[p]) for p in ordered])
    steps = np.diff(positions)
    low, high = int(steps.argmin()), int(steps.argmax())
    if steps[low] < _SAME_POSITION_MM:
        raise DataError(
            str(folder),
            f"slices {ordered[low].name} and {ordered[low + 1].name} lie at the same position ({positions[low]:g} mm "
            "along the slice normal); the folder may hold several acquisitions (echoes, phases) of one series",
        )
    if steps[high] > _MAX_STEP_RATIO * steps[low]:
        raise DataError(
            str(folder),
            f"uneven slice spacing: {steps[high]:g} mm between {ordered[high].name} and {ordered[high + 1].name}, "
            f"{steps[low]:g} mm elsewhere (a missing slice?); pass a complete, evenly spaced series",
        )


def _series_files(folder: Path) -> list[Path]:
    """The DICOM images of ``folder``, checked to form one series of parallel, distinct, evenly spaced slices.

    MONAI's reader stacks every slice of a folder whatever its series, so several series of one size, or a series
    with a missing slice, would otherwise come out as one plausible but wrong volume.

    Raises:
        DataError: no DICOM image in the folder (naming subfolders that hold some), several series, slices without
            a position, or slices that are not parallel, distinct and evenly spaced.
    """
    headers = _dicom_headers(folder)
    if not headers:
        raise DataError(str(folder), _no_dicom_problem(folder))
    series: dict[str, list[Dataset]] = {}
    for header in headers.values():
        series.setdefault(str(header.get("SeriesInstanceUID", "(no SeriesInstanceUID)")), []).append(header)
    if len(series) > 1:
        listed = "; ".join(_series_summary(uid, members) for uid, members in series.items())
        raise DataError(
            str(folder), f"{len(series)} DICOM series in one folder: {listed}; pass the folder of one series"
        )
    if len(headers) > 1:
        _check_slice_positions(folder, headers)
    return list(headers)


class _SeriesReader(PydicomReader):
    """MONAI's DICOM reader restricted to the checked files of one series, stacking them in position order.

    PydicomReader stacks a folder's slices by InstanceNumber, which need not follow the anatomy, and takes the slice
    step from the first and last one; renumbering the datasets it read (in memory) by their position along the slice
    normal makes the pixel stack and the affine follow the anatomy.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        super().__init__(fname_regex=r".*[\\/](?:" + "|".join(re.escape(f.name) for f in files) + ")$")
        self._n_files = len(files)

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> Any:
        slices = super().read(data, **kwargs)
        n_read = len(slices) if isinstance(slices, list) else 1
        if n_read != self._n_files:  # PydicomReader skips a file it cannot parse with only a warning
            raise ValueError(f"read {n_read} of the {self._n_files} DICOM files of the series")
        if isinstance(slices, list):  # one file (e.g. multi-frame) is one dataset
            for number, header in enumerate(sorted(slices, key=_slice_position), start=1):
                header.InstanceNumber = number
        return slices


def _read(src: Path, what: str) -> MetaTensor:
    if not src.exists():
        raise DataError(str(src), f"{what} not found")
    name = _reader_name(src)
    if src.is_dir():
        reader = _SeriesReader(_series_files(src))
    elif name == "PydicomReader":
        _dicom_header(src)  # a file that is not DICOM at all is left to the reader's error below
        reader = PydicomReader()
    else:
        reader = NibabelReader()
    try:
        with _tracking_meta():  # a reader given at call time has no fallback to MONAI's others
            return LoadImage(image_only=True, ensure_channel_first=True)(str(src), reader=reader)
    except Exception as err:  # the readers raise many types for corrupt or foreign files
        raise DataError(str(src), f"cannot read with {name} ({type(err).__name__}: {err})") from err


def load_source(src: str | os.PathLike) -> MetaTensor:
    """Read a NIfTI file, a DICOM file or a DICOM series folder as a checked 3D scan.

    For DICOM the source grid is the array MONAI builds: (column, row, slice), slices in position order along the
    slice normal. A folder must hold the slices of one series directly (other files are skipped), evenly spaced.

    Returns:
        A float32 ``MetaTensor`` (1, X, Y, Z) whose ``affine`` maps voxel indices to RAS+ millimetres.

    Raises:
        DataError: missing or unreadable input, not 3D (2D, 4D or a single slice), NaN/inf, or constant values; a
            DICOM folder without images, with several series, or with missing, duplicate or unevenly spaced slices.
    """
    src = Path(src)
    image = _read(src, "input")
    if str(image.meta.get("space", "RAS")) != "RAS":
        raise DataError(str(src), f"reader returned a {image.meta.get('space')} affine, expected RAS")
    check_scan(image, str(src))
    return image


def check_scan(image: torch.Tensor, src: str) -> None:
    """Refuse what no window or resize can make a volume of: not single-channel 3D (2D, 4D, one slice), NaN/inf, or
    constant values.

    Raises:
        DataError: naming ``src`` and the problem.
    """
    spatial = tuple(image.shape[1:])
    if len(spatial) != 3 or image.shape[0] != 1 or min(spatial) < 2:
        raise DataError(src, f"expected a single-channel 3D scan, got array shape {tuple(image.shape)}")
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise DataError(src, f"scan holds {int((~np.isfinite(values)).sum())} NaN/inf value(s)")
    if float(values.max()) - float(values.min()) <= 1e-8:
        raise DataError(src, f"scan is constant (all values {float(values.min()):g})")


def _warn_unless_hounsfield(image: torch.Tensor, window: str, src: str) -> None:
    """A CT window assumes Hounsfield units; a scan without air (≈ −1000 HU around and inside the body) is most
    likely MRI or CT stored without its rescale, which the window would turn into a saturated volume."""
    lowest = float(image.min())
    if lowest > HU_AIR_BELOW:
        logger.warning("%s: lowest value %g, no air, so probably not CT in Hounsfield units, which the %r window "
                       "assumes; for MRI or other units use window 'percentile' (m3d: --window percentile)",
                       src, lowest, window)


def _ct_range(window: str) -> tuple[float, float]:
    """The Hounsfield units a CT preset maps to 0 and 1."""
    width, level = WINDOWS[window]
    return level - width / 2, level + width / 2


def _intensity_range(image: torch.Tensor, window: str, src: str) -> tuple[float, float]:
    if window in WINDOWS:
        _warn_unless_hounsfield(image, window, src)
        return _ct_range(window)
    lo, hi = (float(v) for v in np.percentile(image.numpy(), PERCENTILES))
    if hi - lo <= 1e-8:
        raise DataError(src, f"the {PERCENTILES} percentiles are equal ({lo:g}); the percentile window is empty")
    return lo, hi


def _foreground_crop(image: MetaTensor, src: str) -> tuple[list[int], list[int]]:
    start, end = CropForeground().compute_bounding_box(image)
    if np.any(np.asarray(end) <= np.asarray(start)):
        raise DataError(src, "no voxel lies above the window floor; choose another window")
    return [int(v) for v in start], [int(v) for v in end]


def check_spatial_size(spatial_size: Sequence[int]) -> tuple[int, int, int]:
    """``spatial_size`` as a (D, H, W) tuple of positive ints.

    Raises:
        ValueError: not three positive integers.
    """
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"spatial_size must be three positive integers (D, H, W), got {tuple(spatial_size)}")
    return size[0], size[1], size[2]


def check_options(window: str, spatial_size: Sequence[int], cache_dtype: str) -> tuple[int, int, int]:
    """Check the preparation options before any file is read; returns the (D, H, W) size.

    Raises:
        ValueError: unknown window or cache dtype, or a bad ``spatial_size``.
    """
    if window not in (*WINDOWS, "percentile"):
        raise ValueError(f"window must be one of {(*WINDOWS, 'percentile')}, got {window!r}")
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {CACHE_DTYPES}, got {cache_dtype!r}")
    return check_spatial_size(spatial_size)


def prepare_volume(
    src: str | os.PathLike,
    out_npy: str | os.PathLike,
    window: str = "abdomen",
    spatial_size: Sequence[int] = CANONICAL_SHAPE[1:],
    cache_dtype: str = "float32",
    crop_foreground: bool = True,
) -> dict[str, Any]:
    """Turn a NIfTI file or DICOM series into a canonical volume and write its sidecar.

    Steps: orient to ``"IPL"``; window to [0, 1] (a CT preset from :data:`WINDOWS`, or ``"percentile"``: the
    0.5–99.5 % range of the scan, for MRI); crop to the voxels above the window floor; resize with 3D trilinear
    interpolation (``align_corners=False``, so voxel centres map linearly, which is what the sidecar records).

    Args:
        src: ``.nii``/``.nii.gz`` file, ``.dcm`` file or DICOM series folder.
        out_npy: output ``.npy``; the sidecar goes to :func:`sidecar_path` of it.
        window: ``"abdomen"``, ``"lung"``, ``"bone"``, ``"brain"`` or ``"percentile"``.
        spatial_size: canonical (D, H, W).
        cache_dtype: ``"float32"``, or a ``"float16"``/``"uint8"`` cache.
        crop_foreground: crop to the voxels above the window floor before resizing.

    Returns:
        The sidecar dict (also written as JSON).

    Raises:
        DataError: unreadable or unusable input (see :func:`load_source`), or nothing above the window floor.
        ValueError: unknown window or cache dtype, or a bad ``spatial_size``.
    """
    size = check_options(window, spatial_size, cache_dtype)
    source = load_source(src)
    canonical, steps = _to_canonical(source, window, size, crop_foreground, str(src))
    save_volume(out_npy, check_volume(canonical.numpy(), str(src), (1, *size)), cache_dtype)
    source_affine = source.affine.to(torch.float64)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "source": str(Path(src).resolve()),
        "output": Path(out_npy).name,
        "cache_dtype": cache_dtype,
        "affine_convention": "RAS",
        "source_shape": [int(s) for s in source.shape[1:]],
        "source_affine": source_affine.tolist(),
        **steps,
        "spatial_size": list(size),
        "canonical_to_source": torch.linalg.solve(source_affine, canonical.affine.to(torch.float64)).tolist(),
    }
    sidecar_path(out_npy).write_text(json.dumps(sidecar, indent=1))
    logger.info("%s → %s %s (window %s, crop %s)", src, out_npy, size, window, steps["crop"])
    return sidecar


class CheckScand(MapTransform):
    """:func:`load_source`'s checks inside a MONAI chain (:func:`scan_transforms`): a clear error naming the file
    where the crop or resize further on would fail deep inside MONAI or pass NaN on as a mask.

    Args:
        keys: the loaded scan(s), channel first.
        window: the CT window that follows; a scan with nothing above its floor, or without air, is named.
    """

    def __init__(self, keys: KeysCollection, window: str) -> None:
        super().__init__(keys)
        self.window = window

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            src = str(getattr(image, "meta", {}).get("filename_or_obj", key))
            check_scan(image, src)
            _warn_unless_hounsfield(image, self.window, src)
            if float(image.max()) <= _ct_range(self.window)[0]:
                raise DataError(src, f"no voxel lies above the floor of the {self.window!r} window; choose another")
        return d


def scan_transforms(window: str = "abdomen", spatial_size: Sequence[int] = CANONICAL_SHAPE[1:], key: str = "image"):
    """:func:`prepare_volume`'s steps as invertible MONAI dictionary transforms (load, orient, window, crop, resize).

    For callers that work in MONAI's transform world — MONAI Label's bundle inference, or ``Invertd`` bringing a
    prediction back to the scan — rather than with a sidecar file. CT windows only (the percentile window is
    per-scan and has no dictionary transform here).
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {tuple(WINDOWS)} for scan_transforms, got {window!r}")
    lo, hi = _ct_range(window)
    return Compose([
        LoadImaged(keys=key),
        EnsureChannelFirstd(keys=key),
        CheckScand(keys=key, window=window),
        Orientationd(keys=key, axcodes=CANONICAL_AXCODES, labels=_RAS_LABELS),
        ScaleIntensityRanged(keys=key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=key, source_key=key, allow_smaller=True),
        Resized(keys=key, spatial_size=check_spatial_size(spatial_size), mode="trilinear", align_corners=False),
    ])


def _to_canonical(
    source: MetaTensor, window: str, size: tuple[int, int, int], crop_foreground: bool, src: str
) -> tuple[MetaTensor, dict[str, Any]]:
    """Orient, window, crop and resize; returns the (1, D, H, W) result and the sidecar fields of the steps."""
    with _tracking_meta():
        oriented = Orientation(axcodes=CANONICAL_AXCODES, labels=_RAS_LABELS)(source)
        lo, hi = _intensity_range(oriented, window, src)
        scaled = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(oriented)
        oriented_shape = [int(s) for s in scaled.shape[1:]]
        start, end = _foreground_crop(scaled, src) if crop_foreground else ([0, 0, 0], oriented_shape)
        cropped = SpatialCrop(roi_start=start, roi_end=end)(scaled)
        canonical = Resize(spatial_size=size, mode="trilinear", align_corners=False)(cropped)
    steps = {
        "orientation": CANONICAL_AXCODES,
        "oriented_shape": oriented_shape,
        "window": {"name": window, "range": [lo, hi]},
        "crop": {"start": start, "end": end},
    }
    return canonical, steps


def load_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sidecar written by :func:`prepare_volume`.

    Raises:
        DataError: missing or unreadable file, a missing key, or a malformed shape or matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "sidecar not found")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(str(path), f"cannot read as JSON ({type(err).__name__}: {err})") from err
    if not isinstance(sidecar, dict):
        raise DataError(str(path), f"expected a JSON object, got {type(sidecar).__name__}")
    _check_sidecar(sidecar, str(path))
    return sidecar


def _check_sidecar(sidecar: Mapping[str, Any], source: str) -> None:
    missing = [k for k in _SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise DataError(source, f"sidecar lacks key(s) {missing}")
    if sidecar["format"] != SIDECAR_FORMAT:
        raise DataError(source, f"sidecar format is {sidecar['format']!r}, expected {SIDECAR_FORMAT!r}")
    for key in ("source_shape", "spatial_size"):
        shape = np.asarray(sidecar[key])
        if shape.shape != (3,) or not np.all(shape >= 1):
            raise DataError(source, f"sidecar '{key}' must be three positive integers, got {sidecar[key]}")
    for key in ("source_affine", "canonical_to_source"):
        matrix = np.asarray(sidecar[key], dtype=float)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-12:
            raise DataError(source, f"sidecar '{key}' must be an invertible 4×4 matrix, got {sidecar[key]}")


def _matrix(sidecar: Mapping[str, Any], key: str) -> np.ndarray:
    return np.asarray(sidecar[key], dtype=np.float64)


def _box_corners(box: Sequence[float], spatial_size: Sequence[int]) -> np.ndarray:
    """The 8 outer corners (half-voxel extents) of a canonical voxel box, homogeneous (8, 4)."""
    if len(box) != 6:
        raise ValueError(f"a box is [d0, h0, w0, d1, h1, w1], got {list(box)}")
    lo, hi = np.asarray(box[:3], dtype=float), np.asarray(box[3:], dtype=float)
    if np.any(lo > hi):
        raise ValueError(f"box {list(box)} has a minimum above its maximum")
    lo, hi = np.maximum(lo, 0) - 0.5, np.minimum(hi, np.asarray(spatial_size) - 1) + 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    return np.concatenate([corners, np.ones((8, 1))], axis=1)


def box_to_source(box: Sequence[float], sidecar: Mapping[str, Any]) -> list[int]:
    """Map a canonical voxel box to the source voxel grid.

    The box's outer corners are mapped through ``canonical_to_source``; the result holds every source voxel whose
    centre lies inside the mapped extent (at least the voxel under the box centre), clipped to the source shape.

    Args:
        box: ``[d0, h0, w0, d1, h1, w1]`` canonical voxel indices (inclusive), e.g. from ``boxes.mask_to_box`` or
            ``boxes.denormalize_box``.
        sidecar: the dict from :func:`prepare_volume` / :func:`load_sidecar`.

    Returns:
        ``[i0, j0, k0, i1, j1, k1]``: inclusive indices along the source array axes.
    """
    points = _box_corners(box, sidecar["spatial_size"]) @ _matrix(sidecar, "canonical_to_source").T
    lo, hi = points[:, :3].min(axis=0), points[:, :3].max(axis=0)
    first, last = np.ceil(lo - 1e-6), np.floor(hi + 1e-6)
    centre = np.round((lo + hi) / 2)
    first, last = np.where(first > last, centre, first), np.where(first > last, centre, last)
    top = np.asarray(sidecar["source_shape"]) - 1
    return [int(v) for v in np.clip(first, 0, top)] + [int(v) for v in np.clip(last, 0, top)]


def box_to_patient_mm(box: Sequence[float], sidecar: Mapping[str, Any], convention: str = "RAS") -> list[float]:
    """Map a canonical voxel box to patient coordinates in millimetres.

    The box's outer corners go through the source affine into RAS+ world coordinates, as nibabel uses them (x grows
    towards the patient's Right, y Anterior, z Superior); the result is their axis-aligned envelope.
    ``convention="LPS"`` negates x and y, giving the DICOM patient coordinate system.

    Args:
        box: ``[d0, h0, w0, d1, h1, w1]`` canonical voxel indices (inclusive).
        sidecar: the dict from :func:`prepare_volume` / :func:`load_sidecar`.
        convention: ``"RAS"`` (default) or ``"LPS"``.

    Returns:
        ``[x0, y0, z0, x1, y1, z1]`` in mm.
    """
    if convention not in ("RAS", "LPS"):
        raise ValueError(f"convention must be 'RAS' or 'LPS', got {convention!r}")
    to_world = _matrix(sidecar, "source_affine") @ _matrix(sidecar, "canonical_to_source")
    points = (_box_corners(box, sidecar["spatial_size"]) @ to_world.T)[:, :3]
    if convention == "LPS":
        points[:, :2] *= -1
    return [float(v) for v in points.min(axis=0)] + [float(v) for v in points.max(axis=0)]


def _canonical_mask(mask: np.ndarray, sidecar: Mapping[str, Any]) -> np.ndarray:
    m = np.asarray(mask)
    m = m[0] if m.ndim == 4 and m.shape[0] == 1 else m
    if m.shape != tuple(sidecar["spatial_size"]):
        raise ValueError(
            f"mask shape {tuple(np.shape(mask))} does not match the canonical size {tuple(sidecar['spatial_size'])}"
        )
    return m


def mask_to_source(mask: np.ndarray, sidecar: Mapping[str, Any]) -> np.ndarray:
    """Resample a canonical mask onto the source grid by nearest neighbour.

    Each source voxel takes the canonical voxel its centre falls in; voxels outside the canonical volume (cropped
    away) are background.

    Args:
        mask: (1, D, H, W) or (D, H, W) canonical mask (nonzero = foreground).
        sidecar: the dict from :func:`prepare_volume` / :func:`load_sidecar`.

    Returns:
        bool array in the source shape (X, Y, Z).
    """
    m = _canonical_mask(mask, sidecar).astype(np.uint8)
    source_to_canonical = np.linalg.inv(_matrix(sidecar, "canonical_to_source"))
    out = ndimage.affine_transform(
        m, source_to_canonical, output_shape=tuple(sidecar["source_shape"]), order=0, mode="grid-constant", cval=0
    )
    return out > 0


def write_mask_nifti(mask: np.ndarray, sidecar: Mapping[str, Any], out_path: str | os.PathLike) -> Path:
    """Write a canonical mask as a uint8 NIfTI on the source grid (same shape and affine as the scan).

    Args:
        mask: (1, D, H, W) or (D, H, W) canonical mask.
        sidecar: the dict from :func:`prepare_volume` / :func:`load_sidecar`.
        out_path: ``.nii`` or ``.nii.gz`` file.
    """
    import nibabel as nib

    out_path = Path(out_path)
    if not out_path.name.lower().endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"out_path must end in .nii or .nii.gz, got {out_path}")
    data = mask_to_source(mask, sidecar).astype(np.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, _matrix(sidecar, "source_affine")), str(out_path))
    return out_path


def prepare_mask(label_src: str | os.PathLike, sidecar: Mapping[str, Any]) -> np.ndarray:
    """Push an integer label map on the scan's grid through the same mapping as the scan (nearest neighbour).

    Args:
        label_src: label map file or DICOM folder, on the same grid (shape and affine) as the sidecar's source.
        sidecar: the dict from :func:`prepare_volume` / :func:`load_sidecar`.

    Returns:
        int32 (1, D, H, W) label map aligned with the canonical volume.

    Raises:
        DataError: unreadable label map, non-integer values, or a grid that differs from the scan's.
    """
    label = _load_label_map(label_src)
    _check_same_grid(label, sidecar, str(label_src))
    out = ndimage.affine_transform(
        label[0].numpy().astype(np.int32),
        _matrix(sidecar, "canonical_to_source"),
        output_shape=tuple(sidecar["spatial_size"]),
        order=0,
        mode="grid-constant",
        cval=0,
    )
    return out[None]


def _load_label_map(label_src: str | os.PathLike) -> MetaTensor:
    label = _read(Path(label_src), "label map")
    values = label.numpy()
    if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
        raise DataError(str(label_src), "not an integer label map (non-integer or non-finite values)")
    return label


def _check_same_grid(label: MetaTensor, sidecar: Mapping[str, Any], src: str) -> None:
    shape = list(label.shape[1:])
    if shape != list(sidecar["source_shape"]):
        raise DataError(src, f"label map shape {shape} differs from the scan's {list(sidecar['source_shape'])}")
    affine = label.affine.to(torch.float64).numpy()
    if not np.allclose(affine, _matrix(sidecar, "source_affine"), atol=_AFFINE_TOLERANCE):
        raise DataError(src, f"label map affine {affine.round(3).tolist()} differs from the scan's")
