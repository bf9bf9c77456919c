"""M3D-Seg → the LaMed-ready layout the segmentation and positioning readers consume.

Output, per dataset code: ``<out>/<code>/<case>/image.npy`` (1, D, H, W) in [0, 1]; one
``<out>/<code>/<case>/masks/mask_<i>.npy`` per class ``i`` (0-based; class i = label value i+1), a bool (1, D, H, W)
array when the class is present after resizing, else a (1, 1, 1, 1) int8 zero array marking a negative sample; and
``<out>/<code>/<code>.json`` with ``labels`` and ``train``/``test`` lists holding one ``{"image", "label"}`` entry per
(image, class), paths relative to ``<out>``. ``<out>/dataset_info.json`` maps each code to its class names.

Two inputs are accepted:

* the raw M3D-Seg release, ``<raw>/<code>/<code>.json`` (splits ``train``/``test`` or ``training``/``validation``)
  with per case ``image.npy`` (1, X, Y, Z) and ``mask_(C, X, Y, Z).npz``. As in the reference, axes are swapped
  (X, Y, Z) → (Z, Y, X), the image is min–max scaled, both are cropped to the image foreground (> 0) and resized
  (image trilinear, masks nearest, both sampling at voxel centres);
* a Decathlon-style NIfTI folder, ``<raw>/dataset.json`` (``labels``, ``training`` and optional ``test`` lists of
  ``{"image", "label"}``) with integer label maps; scans go through :func:`ingest.prepare_volume` (orientation
  ``"IPL"``, a window, foreground crop, resize; the sidecar is kept as ``image.json``) and label maps through
  :func:`ingest.prepare_mask`. The default window is ``"percentile"`` because it suits CT and MRI alike; pass a CT
  preset for calibrated CT. The code is the folder name.

When an input has no labelled test cases, ``test_fraction`` of the training cases is held out by a seeded shuffle.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import CropForeground, Resize

from m3d_components.data.errors import DataError, SkipLog
from m3d_components.data.ingest import check_options, prepare_mask, prepare_volume
from m3d_components.data.masks import NEGATIVE_SHAPE, load_sparse_mask
from m3d_components.data.parallel import map_tasks
from m3d_components.data.volume import CANONICAL_SHAPE, check_volume, minmax_normalize, save_volume

__all__ = ["DATASET_INFO_FILE", "prepare_m3d_seg"]

logger = logging.getLogger(__name__)

DATASET_INFO_FILE = "dataset_info.json"
_TRAIN_KEYS = ("train", "training")
_TEST_KEYS = ("test", "validation")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

Skip = tuple[str, str]  # (file, problem): plain tuples cross process boundaries, DataError does not unpickle


@dataclass(frozen=True)
class _Dataset:
    code: str
    kind: str  # "raw" (M3D-Seg release) or "nifti" (Decathlon-style)
    spec_path: Path


@dataclass(frozen=True)
class _CaseTask:
    kind: str
    image: str
    label: str
    case_dir: str
    label_values: tuple[int, ...]
    spatial_size: tuple[int, int, int]
    cache_dtype: str
    window: str


@dataclass
class _CaseResult:
    present: list[bool] = field(default_factory=list)
    skip: Skip | None = None


def _find_datasets(raw: Path, codes: Sequence[str] | None) -> list[_Dataset]:
    if not raw.is_dir():
        raise DataError(str(raw), "M3D-Seg input folder not found")
    if (raw / "dataset.json").is_file():
        found = [_Dataset(raw.name, "nifti", raw / "dataset.json")]
    elif (raw / f"{raw.name}.json").is_file():
        found = [_Dataset(raw.name, "raw", raw / f"{raw.name}.json")]
    else:
        folders = sorted(d for d in raw.iterdir() if (d / f"{d.name}.json").is_file())
        found = [_Dataset(d.name, "raw", d / f"{d.name}.json") for d in folders]
    if codes is not None:
        found = [d for d in found if d.code in set(codes)]
    if not found:
        raise DataError(
            str(raw), f"no M3D-Seg dataset{f' among codes {list(codes)}' if codes else ''}: expected "
            "<code>/<code>.json (raw release) or dataset.json (Decathlon-style NIfTI)"
        )
    return found


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(str(path), f"cannot read as JSON ({type(err).__name__}: {err})") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("labels"), dict):
        raise DataError(str(path), "expected a JSON object with a 'labels' mapping {\"0\": \"background\", ...}")
    return spec


def _classes(spec: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    """(label value, class name) of every non-background label, ascending; class i is the i-th of them."""
    classes = []
    for key, name in spec["labels"].items():
        if not str(key).isdigit():
            raise DataError(str(path), f"'labels' key {key!r} is not a non-negative integer")
        if int(key) != 0:
            classes.append((int(key), str(name)))
    if not classes:
        raise DataError(str(path), "'labels' names no class besides background")
    return sorted(classes)


def _resolve(value: Any, bases: Sequence[Path], source: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataError(source, f"expected a file path, got {value!r}")
    candidates = [Path(value)] if Path(value).is_absolute() else [base / value for base in bases]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(source, f"file {value!r} not found under {[str(b) for b in bases]}")


def _case_name(image: Path) -> str:
    if image.name == "image.npy":
        return image.parent.name
    for suffix in (*_NIFTI_SUFFIXES, ".npy"):
        if image.name.endswith(suffix):
            return image.name[: -len(suffix)]
    return image.stem


def _split_entries(spec: dict[str, Any], path: Path, log: SkipLog) -> dict[str, list[tuple[str, Any]]]:
    """Entries per output split, each as (its place in the JSON, the entry); unlabelled entries are skipped."""
    splits: dict[str, list[tuple[str, Any]]] = {"train": [], "test": []}
    for out_name, keys in (("train", _TRAIN_KEYS), ("test", _TEST_KEYS)):
        for key in keys:
            for i, entry in enumerate(spec.get(key) or []):
                where = f"{path.name}['{key}'][{i}]"
                if isinstance(entry, dict) and entry.get("label"):
                    splits[out_name].append((where, entry))
                else:
                    log.skip(DataError(str(path), f"{where} has no 'label' (an unlabelled case)"))
    if not splits["train"] and not splits["test"]:
        raise DataError(str(path), f"no labelled cases under {_TRAIN_KEYS + _TEST_KEYS}")
    return splits


def _hold_out(splits: dict[str, list], test_fraction: float, seed: int) -> None:
    if splits["test"] or test_fraction == 0:
        return
    train = splits["train"]
    n_test = int(round(test_fraction * len(train)))
    held = set(np.random.default_rng(seed).permutation(len(train))[:n_test].tolist())
    splits["test"] = [e for i, e in enumerate(train) if i in held]
    splits["train"] = [e for i, e in enumerate(train) if i not in held]


def _case_tasks(
    dataset: _Dataset, spec: dict[str, Any], out: Path, template: _CaseTask, hold_out: tuple[float, int], log: SkipLog
) -> list[tuple[str, _CaseTask]]:
    """(split, task) per labelled case; cases with missing files or a repeated name are skipped and logged.

    Paths in the split file are looked up relative to the raw root (as published), then to the dataset folder.
    """
    folder = dataset.spec_path.parent
    bases = [folder.parent, folder] if dataset.kind == "raw" else [folder]
    splits = _split_entries(spec, dataset.spec_path, log)
    _hold_out(splits, *hold_out)
    tasks, names = [], set()
    for split in ("train", "test"):
        for where, entry in splits[split]:
            source = f"{dataset.spec_path}: {where}"
            try:
                image = _resolve(entry.get("image"), bases, source)
                label = _resolve(entry.get("label"), bases, source)
            except DataError as err:
                log.skip(err)
                continue
            name = _case_name(image)
            if name in names:
                log.skip(DataError(source, f"case name {name!r} occurs twice"))
                continue
            names.add(name)
            case_dir = str(out / dataset.code / name)
            tasks.append((split, replace(template, image=str(image), label=str(label), case_dir=case_dir)))
    return tasks


def _load_raw_image(path: str) -> np.ndarray:
    try:
        image = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for truncated or foreign files
        raise DataError(path, f"cannot read as .npy ({type(err).__name__}: {err})") from err
    if image.ndim != 4 or image.shape[0] != 1:
        raise DataError(path, f"expected a (1, X, Y, Z) image, got shape {image.shape}")
    return image


def _raw_case(task: _CaseTask) -> tuple[np.ndarray, list[np.ndarray]]:
    """Raw release case → image (1, D, H, W) and one (D, H, W) bool mask per class."""
    image = _load_raw_image(task.image)
    mask = load_sparse_mask(task.label)
    if mask.shape != (len(task.label_values), *image.shape[1:]):
        raise DataError(
            task.label, f"mask shape {mask.shape} does not fit {len(task.label_values)} classes on the image grid "
            f"{image.shape[1:]}"
        )
    image = minmax_normalize(np.swapaxes(image, 1, 3), task.image)
    mask = np.swapaxes(mask, 1, 3)
    start, end = CropForeground().compute_bounding_box(torch.from_numpy(image))
    crop = tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))
    resize = Resize(task.spatial_size, mode="trilinear", align_corners=False)
    volume = resize(torch.from_numpy(np.ascontiguousarray(image[(slice(None), *crop)]))).numpy()
    nearest = Resize(task.spatial_size, mode="nearest-exact")
    classes = [nearest(torch.from_numpy(m[None][(slice(None), *crop)].astype(np.uint8))).numpy()[0] > 0.5
               for m in mask]
    return check_volume(volume, task.image), classes


def _nifti_case(task: _CaseTask) -> list[np.ndarray]:
    """Decathlon case → writes image.npy + image.json via ingest; returns one (D, H, W) bool mask per class."""
    sidecar = prepare_volume(task.image, Path(task.case_dir) / "image.npy", task.window, task.spatial_size,
                             task.cache_dtype)
    labels = prepare_mask(task.label, sidecar)[0]
    return [labels == value for value in task.label_values]


def _save_masks(case_dir: Path, classes: list[np.ndarray]) -> list[bool]:
    (case_dir / "masks").mkdir(parents=True, exist_ok=True)
    present = []
    for i, mask in enumerate(classes):
        present.append(bool(mask.any()))
        np.save(case_dir / "masks" / f"mask_{i}.npy", mask[None] if present[-1] else np.zeros(NEGATIVE_SHAPE, np.int8))
    return present


def _prepare_case(task: _CaseTask) -> _CaseResult:
    case_dir = Path(task.case_dir)
    try:
        if task.kind == "raw":
            volume, classes = _raw_case(task)
            save_volume(case_dir / "image.npy", volume, task.cache_dtype)
        else:
            classes = _nifti_case(task)
    except DataError as err:
        return _CaseResult(skip=(err.source, err.problem))
    return _CaseResult(present=_save_masks(case_dir, classes))


def prepare_m3d_seg(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    spatial_size: Sequence[int] = CANONICAL_SHAPE[1:],
    cache_dtype: str = "float32",
    window: str = "percentile",
    codes: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert the raw M3D-Seg release (or one Decathlon-style NIfTI dataset) into the LaMed-ready layout.

    Args:
        raw_dir: raw release root (``<code>/<code>.json`` folders), one code folder, or a folder with ``dataset.json``.
        out_dir: output root (the ``data_root`` the M3D-Seg reader is given).
        spatial_size: canonical (D, H, W).
        cache_dtype: image dtype, ``"float32"`` or a ``"float16"``/``"uint8"`` cache (masks are always bool).
        window: window for NIfTI scans (see :data:`ingest.WINDOWS`, or ``"percentile"``); unused for the raw release.
        codes: convert only these dataset codes (default: all found).
        test_fraction: share of training cases held out when an input has no labelled test cases.
        seed: seed of that hold-out.
        workers: processes converting cases in parallel (each holds one case's dense masks in memory).

    Returns:
        ``datasets``: per code the number of cases, and of (image, class) entries in ``train`` and ``test``;
        totals ``cases``, ``masks``, ``negatives`` and ``skipped_cases``.

    Raises:
        DataError: no dataset found, or an unreadable split file / labels mapping.
        ValueError: bad options.
    """
    size = check_options(window, spatial_size, cache_dtype)
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    raw, out = Path(raw_dir), Path(out_dir)
    log = SkipLog("M3D-Seg cases")
    summary: dict[str, Any] = {"datasets": {}, "cases": 0, "masks": 0, "negatives": 0}
    info: dict[str, list[str]] = {}
    for dataset in _find_datasets(raw, codes):
        spec = _read_spec(dataset.spec_path)
        classes = _classes(spec, dataset.spec_path)
        template = _CaseTask(dataset.kind, "", "", "", tuple(v for v, _ in classes), size, cache_dtype, window)
        tasks = _case_tasks(dataset, spec, out, template, (test_fraction, seed), log)
        results = map_tasks(_prepare_case, [t for _, t in tasks], workers)
        splits = _collect_entries(tasks, results, out, log)
        _write_dataset_json(out / dataset.code / f"{dataset.code}.json", spec, dataset.code, classes, splits)
        info[dataset.code] = [name for _, name in classes]
        present = [p for r in results for p in r.present]
        summary["datasets"][dataset.code] = {"cases": sum(r.skip is None for r in results),
                                             **{k: len(v) for k, v in splits.items()}}
        summary["cases"] += summary["datasets"][dataset.code]["cases"]
        summary["masks"] += len(present)
        summary["negatives"] += present.count(False)
        logger.info("M3D-Seg %s: %s", dataset.code, summary["datasets"][dataset.code])
    _merge_dataset_info(out / DATASET_INFO_FILE, info)
    logger.info(log.summary())
    return {**summary, "skipped_cases": log.skipped}


def _collect_entries(
    tasks: list[tuple[str, _CaseTask]], results: list[_CaseResult], out: Path, log: SkipLog
) -> dict[str, list[dict[str, str]]]:
    """Log the workers' skips here (workers cannot share the counter); one entry per (image, class)."""
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for (split, task), result in zip(tasks, results, strict=True):
        if result.skip is not None:
            log.skip(DataError(*result.skip))
            continue
        case = Path(task.case_dir).relative_to(out).as_posix()
        splits[split] += [{"image": f"{case}/image.npy", "label": f"{case}/masks/mask_{i}.npy"}
                          for i in range(len(result.present))]
    return splits


def _write_dataset_json(
    path: Path, spec: dict[str, Any], code: str, classes: list[tuple[int, str]], splits: dict[str, list]
) -> None:
    """Decathlon-style split file; labels are renumbered 1..C so that mask_<i> is label i+1, as M3D reads them."""
    content = {
        "name": spec.get("name", code),
        "description": spec.get("description", ""),
        "labels": {"0": "background", **{str(i + 1): name for i, (_, name) in enumerate(classes)}},
        **splits,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False))


def _merge_dataset_info(path: Path, info: dict[str, list[str]]) -> None:
    """Add this run's codes to ``dataset_info.json``, keeping codes converted by earlier runs."""
    merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged.update(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(merged.items())), indent=1, ensure_ascii=False))
