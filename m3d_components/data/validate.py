"""``m3d validate-data``: check a whole dataset before a long run.

Every record is parsed with the same readers the training code uses; then (unless ``text_only``) every referenced
file is opened and checked — each distinct file once — for shape, finiteness and range. Problems come back as
``file, row N: reason`` lines; the summary counts records, valid records and problems.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from m3d_components.data.cap import load_report, read_cap_json, read_cap_split
from m3d_components.data.boxes import mask_box
from m3d_components.data.errors import DataError
from m3d_components.data.instruction_file import read_instruction_file
from m3d_components.data.masks import load_class_mask, load_sparse_mask
from m3d_components.data.refseg import load_region_mask, read_refseg_csv
from m3d_components.data.seg import SPLIT_ALIASES, read_json_object, read_label_names, read_seg_split, read_term_dictionary
from m3d_components.data.volume import load_volume
from m3d_components.data.vqa import read_vqa_csv

__all__ = ["FORMATS", "ValidationReport", "validate_data"]

FORMATS = ("m3d-cap", "m3d-vqa", "m3d-seg", "m3d-refseg", "m3d-instructions")


@dataclass
class ValidationReport:
    """What :func:`validate_data` found. ``errors`` counts problem lines; ``valid`` counts records with none."""

    format: str
    records: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return self.records - self.invalid

    def summary(self) -> dict:
        return {"format": self.format, "records": self.records, "valid": self.valid, "errors": len(self.problems)}


class _Checker:
    """Runs each file check once and remembers the outcome, so shared volumes cost one read."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        self.cache: dict[tuple, object] = {}

    def problem(self, error: DataError) -> None:
        self.report.problems.append(str(error))

    def check(self, key: tuple, fn: Callable[[], object]) -> object:
        """Return ``fn()``'s value, or the :class:`DataError` it raised (reported the first time only)."""
        if key not in self.cache:
            try:
                self.cache[key] = fn()
            except DataError as err:
                self.problem(err)
                self.cache[key] = err
        return self.cache[key]

    def record(self, results: Sequence[object]) -> None:
        self.report.records += 1
        self.report.invalid += any(isinstance(r, DataError) for r in results)


def _check_record(checker: _Checker, rec: dict, text_only: bool, shape, mask_checks: Callable[[tuple], list]) -> None:
    """Count a record: text-only, or after opening its volume (once per file) and running ``mask_checks`` on the
    volume's shape; any check result that is a :class:`DataError` marks the record invalid."""
    if text_only:
        checker.record([])
        return
    image_shape = checker.check(("volume", rec["image"]), lambda: load_volume(rec["image"], shape).shape)
    results = [image_shape]
    if not isinstance(image_shape, DataError):
        results += mask_checks(image_shape)
    checker.record(results)


def _reader_errors(report: ValidationReport, checker: _Checker) -> Callable[[DataError], None]:
    def on_error(err: DataError) -> None:
        checker.problem(err)
        report.records += 1
        report.invalid += 1

    return on_error


def _cap(path: Path, root, text_only, shape, report, checker) -> None:
    for split in read_cap_json(path):
        for rec in read_cap_split(path, split, root, not text_only, on_error=_reader_errors(report, checker)):
            results = [] if text_only else [
                checker.check(("volume", rec["image"]), lambda r=rec: load_volume(r["image"], shape).shape),
                checker.check(("report", rec["text_path"]), lambda r=rec: load_report(r["text_path"])),
            ]
            checker.record(results)


def _vqa(path: Path, root, text_only, shape, report, checker) -> None:
    for rec in read_vqa_csv(path, root, not text_only, on_error=_reader_errors(report, checker)):
        results = [] if text_only else [
            checker.check(("volume", rec["image"]), lambda r=rec: load_volume(r["image"], shape).shape)
        ]
        checker.record(results)


def _raw_seg_case(rec: dict) -> tuple:
    """Raw release: the z-scored (1, X, Y, Z) image and the sparse (C, X, Y, Z) mask must agree."""
    try:
        image = np.load(rec["image"], mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise DataError(str(rec["image"]), f"cannot read as .npy ({type(err).__name__}: {err})") from err
    if image.ndim != 4 or image.shape[0] != 1:
        raise DataError(str(rec["image"]), f"expected a (1, X, Y, Z) image, got {tuple(image.shape)}")
    if not np.isfinite(image).all():
        raise DataError(str(rec["image"]), "image holds NaN/inf values")
    mask = load_sparse_mask(rec["label"])
    if mask.shape[1:] != image.shape[1:] or mask.shape[0] != len(rec["class_names"]):
        raise DataError(
            str(rec["label"]),
            f"mask shape {mask.shape} does not fit image {tuple(image.shape)} with {len(rec['class_names'])} classes",
        )
    return mask.shape


def _seg_json_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*/*.json") if p.stem == p.parent.name)
    if not files:
        raise DataError(str(path), "no per-dataset '<code>/<code>.json' files found")
    return files


def _seg(path: Path, root, text_only, shape, report, checker) -> None:
    for resource, reader in (("dataset_info.json", read_label_names), ("term_dictionary.json", read_term_dictionary)):
        if path.is_dir() and (path / resource).is_file():
            checker.check(("resource", resource), lambda r=resource, f=reader: f(path / r))
    for json_path in _seg_json_files(path):
        spec = read_json_object(json_path, "M3D-Seg dataset JSON")
        splits = [s for s in ("train", "test") if any(k in spec for k in SPLIT_ALIASES[s])]
        for split in splits:
            for rec in read_seg_split(json_path, split, root, not text_only, on_error=_reader_errors(report, checker)):
                if not text_only and rec["layout"] == "sparse":
                    checker.record([checker.check(("raw", rec["label"]), lambda r=rec: _raw_seg_case(r))])
                    continue

                def mask(image_shape: tuple, r=rec) -> list:
                    return [checker.check(("mask", r["label"]), lambda: load_class_mask(r["label"], image_shape).sum())]

                _check_record(checker, rec, text_only, shape, mask)


def _refseg(path: Path, root, text_only, shape, report, checker) -> None:
    for rec in read_refseg_csv(path, root, not text_only, on_error=_reader_errors(report, checker)):
        def region(image_shape: tuple, r=rec) -> list:
            key = ("region", r["mask"], r["mask_id"])
            return [checker.check(key, lambda: int(load_region_mask(r["mask"], r["mask_id"], image_shape).sum()))]

        _check_record(checker, rec, text_only, shape, region)


def _box_agrees(rec: dict, box: list[float] | None, file: Path) -> DataError | None:
    """The stored box of an instruction must be its mask's box (within the 3-decimal rounding)."""
    stored = rec["box"]
    if (box is None) != (stored is None) or (box is not None and max(abs(a - b) for a, b in zip(box, stored)) > 1e-3):
        return DataError(file.name, f"stored box {stored} but mask {rec['mask'].name} gives {box}", rec["row"])
    return None


def _instructions(path: Path, root, text_only, shape, report, checker) -> None:
    files = sorted(path.glob("seg_instructions_*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise DataError(str(path), "no seg_instructions_<split>.jsonl files in this folder")
    for file in files:
        for rec in read_instruction_file(file, root, check_files=not text_only, on_error=_reader_errors(report, checker)):
            def box_matches(image_shape: tuple, r=rec, f=file) -> list:
                box = checker.check(("mask box", r["mask"]), lambda: mask_box(load_class_mask(r["mask"], image_shape)))
                mismatch = None if isinstance(box, DataError) else _box_agrees(r, box, f)
                if mismatch is not None:
                    checker.problem(mismatch)
                return [box, mismatch]

            _check_record(checker, rec, text_only, shape, box_matches)


_VALIDATORS = {
    "m3d-cap": _cap, "m3d-vqa": _vqa, "m3d-seg": _seg, "m3d-refseg": _refseg, "m3d-instructions": _instructions,
}


def validate_data(
    fmt: str,
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    text_only: bool = False,
    image_shape: Sequence[int] | None = None,
) -> ValidationReport:
    """Check a dataset in one of the published formats.

    Args:
        fmt: ``m3d-cap`` (split JSON), ``m3d-vqa`` (CSV), ``m3d-seg`` (a per-dataset JSON or the folder holding
            ``<code>/<code>.json``), ``m3d-refseg`` (CSV), ``m3d-instructions`` (a ``seg_instructions_<split>.jsonl``
            file or the folder holding them).
        path: the index file (or M3D-Seg folder).
        root: the data root that relative paths start from; defaults to the index file's folder.
        text_only: parse records only, without opening the referenced files (for when volumes are absent).
        image_shape: the expected (1, D, H, W) of every canonical volume; None accepts any.

    Returns:
        A :class:`ValidationReport`; a file-level problem (missing index file, missing column) is reported as one
        problem with no records.
    """
    if fmt not in _VALIDATORS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    report = ValidationReport(fmt)
    checker = _Checker(report)
    shape = tuple(image_shape) if image_shape is not None else None
    try:
        _VALIDATORS[fmt](Path(path), root, text_only, shape, report, checker)
    except DataError as err:
        checker.problem(err)
    return report
