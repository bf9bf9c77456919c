"""Raw M3D-Cap (Radiopaedia slice images + reports) → canonical volumes, report texts and ``M3D_Cap.json``.

Raw layout: ``<raw>/<ct_case|ct_quizze>/<case>/<series>/<n>.jpeg|png`` (one 8-bit slice per file, ordered by the
integer ``n``) and ``<raw>/<…>/<case>/text.txt``. Output: ``<out>/<…>/<case>/<series>.npy`` (1, D, H, W) in [0, 1],
one ``<out>/<…>/<case>/text.txt`` per case (the findings/discussion rule applied), and ``<out>/M3D_Cap.json`` with
``train``/``validation``/``test`` lists of ``{"image", "text"}`` paths relative to ``<out>``.

The slices keep their published order and in-plane layout (there is no geometry to reorient by). Unlike the
reference script, the resize is true 3D trilinear, and every dropped slice, series or case is counted and logged
with its file.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import CropForeground, Resize
from PIL import Image

from m3d_components.data.errors import DataError, SkipLog
from m3d_components.data.ingest import check_spatial_size
from m3d_components.data.parallel import map_tasks
from m3d_components.data.report import extract_findings
from m3d_components.data.volume import CACHE_DTYPES, CANONICAL_SHAPE, minmax_normalize, save_volume

__all__ = ["SPLIT_NAMES", "ascii_name", "prepare_m3d_cap", "series_to_volume"]

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_FILE = "M3D_Cap.json"
_SLICE_SUFFIXES = (".jpeg", ".jpg", ".png")
_MIN_REPORT_CHARS = 5

Skip = tuple[str, str]  # (file, problem): plain tuples cross process boundaries, DataError does not unpickle


def ascii_name(name: str) -> str:
    """Transliterate to ASCII by dropping accents (NFKD + ignore), e.g. ``"Pöschl"`` → ``"Poschl"``."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").strip()


def _slice_files(folder: Path) -> tuple[list[Path], list[Skip]]:
    files, skips = [], []
    for path in folder.iterdir():
        if path.suffix.lower() not in _SLICE_SUFFIXES:
            continue
        if path.stem.isdigit():
            files.append(path)
        else:
            skips.append((str(path), f"slice name {path.stem!r} is not an integer index"))
    return sorted(files, key=lambda p: int(p.stem)), skips


def _read_slices(files: list[Path]) -> tuple[list[tuple[Path, np.ndarray]], list[Skip]]:
    slices, skips = [], []
    for path in files:
        try:
            with Image.open(path) as image:
                slices.append((path, np.asarray(image.convert("L"))))
        except (OSError, ValueError) as err:  # PIL raises these for truncated or foreign files
            skips.append((str(path), f"unreadable image ({type(err).__name__}: {err})"))
    return slices, skips


def _keep_common_shape(slices: list[tuple[Path, np.ndarray]]) -> tuple[list[np.ndarray], list[Skip]]:
    """Keep the slices of the most common (H, W); ties go to the shape met first, in slice order."""
    common = Counter(s.shape for _, s in slices).most_common(1)[0][0]
    skips = [(str(p), f"slice size {s.shape} differs from the series' {common}")
             for p, s in slices if s.shape != common]
    return [s for _, s in slices if s.shape == common], skips


def series_to_volume(
    folder: str | os.PathLike, spatial_size: Sequence[int] = CANONICAL_SHAPE[1:], min_slices: int = 2
) -> tuple[np.ndarray, list[Skip]]:
    """Stack one series folder of slice images into a canonical volume.

    Slices are ordered by integer file stem, slices not of the most common (H, W) are dropped, the stack is min–max
    scaled, cropped to its foreground (> 0) and resized with 3D trilinear interpolation.

    Args:
        folder: series folder holding ``<n>.jpeg``/``<n>.png`` slices.
        spatial_size: output (D, H, W).
        min_slices: fewest usable slices for a volume.

    Returns:
        float32 (1, D, H, W) in [0, 1], and the dropped slices as ``(file, problem)`` pairs.

    Raises:
        DataError: fewer than ``min_slices`` usable slices, or a constant series.
    """
    folder = Path(folder)
    files, skips = _slice_files(folder)
    slices, unreadable = _read_slices(files)
    skips += unreadable
    if len(slices) < min_slices:
        raise DataError(str(folder), f"{len(slices)} usable slice(s), need at least {min_slices}")
    kept, odd = _keep_common_shape(slices)
    skips += odd
    if len(kept) < min_slices:
        raise DataError(str(folder), f"{len(kept)} slice(s) of the common size, need at least {min_slices}")
    stack = minmax_normalize(np.stack(kept)[None], str(folder))
    cropped = CropForeground()(torch.from_numpy(stack))
    volume = Resize(spatial_size=tuple(spatial_size), mode="trilinear", align_corners=False)(cropped)
    return np.asarray(volume.numpy(), dtype=np.float32), skips


@dataclass(frozen=True)
class _SeriesTask:
    folder: str
    out_npy: str
    spatial_size: tuple[int, int, int]
    cache_dtype: str
    min_slices: int


@dataclass
class _SeriesResult:
    written: bool
    slice_skips: list[Skip] = field(default_factory=list)
    series_skip: Skip | None = None


def _prepare_series(task: _SeriesTask) -> _SeriesResult:
    try:
        volume, skips = series_to_volume(task.folder, task.spatial_size, task.min_slices)
    except DataError as err:
        return _SeriesResult(False, series_skip=(err.source, err.problem))
    save_volume(task.out_npy, volume, task.cache_dtype)
    return _SeriesResult(True, slice_skips=skips)


def _find_cases(raw: Path) -> list[Path]:
    if not raw.is_dir():
        raise DataError(str(raw), "raw M3D-Cap folder not found")
    groups = sorted(d for d in raw.iterdir() if d.is_dir())
    cases = [c for g in groups for c in sorted(g.iterdir()) if c.is_dir()]
    if not cases:
        raise DataError(str(raw), "no case folders found; expected <raw>/<ct_case|ct_quizze>/<case>/")
    return cases


def _read_report(case: Path) -> str:
    path = case / "text.txt"
    if not path.is_file():
        raise DataError(str(path), "report text not found")
    try:
        text = extract_findings(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(str(path), f"cannot read as UTF-8 text ({type(err).__name__}: {err})") from err
    if len(text.replace(" ", "")) < _MIN_REPORT_CHARS:
        raise DataError(str(path), f"report has fewer than {_MIN_REPORT_CHARS} characters: {text!r}")
    return text


def _series_names(case: Path) -> list[tuple[Path, str]]:
    """Series folders with unique ASCII output names (``series_<i>`` when nothing ASCII is left)."""
    named, used = [], set()
    for i, folder in enumerate(sorted(d for d in case.iterdir() if d.is_dir())):
        base = ascii_name(folder.name) or f"series_{i}"
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        if name != folder.name:
            logger.info("%s: series written as %r", folder, name)
        used.add(name)
        named.append((folder, name))
    return named


def _check_split(split: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in split)
    if len(fractions) != len(SPLIT_NAMES) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split must be 3 non-negative fractions (train, validation, test) summing to 1, got {split}")
    return fractions


def _split_cases(cases: list[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Case → split name. Whole cases go to one split, so series of one patient never straddle splits."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val, n_test = (int(round(f * len(cases))) for f in fractions[1:])
    names = ["validation"] * n_val + ["test"] * n_test
    names += ["train"] * (len(cases) - len(names))
    return {cases[i]: name for i, name in zip(order, names, strict=True)}


def prepare_m3d_cap(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    spatial_size: Sequence[int] = CANONICAL_SHAPE[1:],
    cache_dtype: str = "float32",
    workers: int = 1,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    min_slices: int = 2,
) -> dict[str, Any]:
    """Convert the raw M3D-Cap release into volumes, texts and a seeded ``M3D_Cap.json``.

    Args:
        raw_dir: folder holding ``ct_case/`` and/or ``ct_quizze/``.
        out_dir: output root (the ``data_root`` the M3D-Cap reader is given).
        spatial_size: canonical (D, H, W).
        cache_dtype: ``"float32"``, or a ``"float16"``/``"uint8"`` cache.
        workers: processes converting series in parallel.
        split: train/validation/test fractions of the cases.
        seed: seed of the case shuffle behind the split.
        min_slices: series with fewer usable slices are skipped.

    Returns:
        Counts: ``cases``, ``series``, ``skipped_cases``, ``skipped_series``, ``skipped_slices``, pairs per split
        under ``splits``, and ``split_file``.

    Raises:
        DataError: ``raw_dir`` missing or holding no case folders.
        ValueError: bad ``split``, ``cache_dtype`` or ``workers``.
    """
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {CACHE_DTYPES}, got {cache_dtype!r}")
    size = check_spatial_size(spatial_size)
    fractions = _check_split(split)
    raw, out = Path(raw_dir), Path(out_dir)
    logs = {kind: SkipLog(f"M3D-Cap {kind}") for kind in ("cases", "series", "slices")}
    reports, tasks = {}, []
    for case in _find_cases(raw):
        try:
            reports[case.relative_to(raw).as_posix()] = _read_report(case)
        except DataError as err:
            logs["cases"].skip(err)
            continue
        for folder, name in _series_names(case):
            out_npy = out / case.relative_to(raw) / f"{name}.npy"
            tasks.append(_SeriesTask(str(folder), str(out_npy), size, cache_dtype, min_slices))
    results = map_tasks(_prepare_series, tasks, workers)
    pairs = _collect_pairs(tasks, results, out, logs)
    for case in reports.keys() - pairs.keys():
        logs["cases"].skip(DataError(str(raw / case), "no usable series"))
    for case in pairs:
        (out / case / "text.txt").write_text(reports[case] + "\n", encoding="utf-8")
    counts = _write_split_file(pairs, out / SPLIT_FILE, fractions, seed)
    for log in logs.values():
        logger.info(log.summary())
    return {
        "cases": len(pairs),
        "series": sum(len(p) for p in pairs.values()),
        **{f"skipped_{kind}": log.skipped for kind, log in logs.items()},
        "splits": counts,
        "split_file": str(out / SPLIT_FILE),
    }


def _collect_pairs(
    tasks: list[_SeriesTask], results: list[_SeriesResult], out: Path, logs: dict[str, SkipLog]
) -> dict[str, list[dict[str, str]]]:
    """Log the workers' skips here (workers cannot share the counters) and gather ``{"image", "text"}`` per case."""
    pairs: dict[str, list[dict[str, str]]] = {}
    for task, result in zip(tasks, results, strict=True):
        for source, problem in result.slice_skips:
            logs["slices"].skip(DataError(source, problem))
        if result.series_skip is not None:
            logs["series"].skip(DataError(*result.series_skip))
        if result.written:
            image = Path(task.out_npy).relative_to(out)
            case = image.parent.as_posix()
            pairs.setdefault(case, []).append({"image": image.as_posix(), "text": f"{case}/text.txt"})
    return pairs


def _write_split_file(
    pairs: dict[str, list[dict[str, str]]], path: Path, fractions: Sequence[float], seed: int
) -> dict[str, int]:
    cases = sorted(pairs)
    assignment = _split_cases(cases, fractions, seed)
    splits: dict[str, list[dict[str, str]]] = {name: [] for name in SPLIT_NAMES}
    for case in cases:
        splits[assignment[case]].extend(pairs[case])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits, indent=1, ensure_ascii=False))
    return {name: len(entries) for name, entries in splits.items()}
