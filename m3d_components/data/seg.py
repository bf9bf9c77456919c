"""M3D-Seg: per-dataset Decathlon-style JSON, per-class masks, label names and the term dictionary.

Two layouts are read (see :mod:`m3d_components.data.masks`): the LaMed-ready one — one JSON entry per
(image, class) whose ``label`` is ``masks/mask_<i>.npy`` — which the datasets train on, and the raw release — one
entry per case whose ``label`` is a sparse ``mask_(C, X, Y, Z).npz`` — which ``m3d validate-data`` checks and
``m3d prepare m3d-seg`` converts. Split keys ``train``/``test`` and the older ``training``/``validation`` are both
accepted.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3d_components.data import prompts
from m3d_components.data.boxes import mask_box
from m3d_components.data.dataset import RecordDataset, Sample
from m3d_components.data.errors import DataError
from m3d_components.data.masks import class_index_from_name, load_class_mask
from m3d_components.data.records import ErrorHandler, error_handler, resolve_path

__all__ = [
    "average_masks",
    "average_box",
    "SEG_TASKS",
    "SPLIT_ALIASES",
    "SegTaskDataset",
    "read_json_object",
    "read_label_names",
    "read_seg_split",
    "read_term_dictionary",
]

# M3D-Seg ships train/test (older copies training/validation): each split name falls back to its counterpart.
SPLIT_ALIASES = {"train": ("train", "training"), "test": ("test", "validation"), "validation": ("validation", "test")}
SEG_TASKS = ("ss", "res", "rec", "reg")


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """Read a JSON file that must hold an object; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), f"{what} not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(str(path), f"not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise DataError(str(path), f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def read_label_names(path: str | os.PathLike) -> dict[str, list[str]]:
    """``dataset_info.json``: dataset code → class names in channel order (index i = label value i+1)."""
    info = read_json_object(path, "dataset_info.json")
    for code, names in info.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DataError(str(path), f"dataset {code!r}: expected a list of class names")
    return info


def read_term_dictionary(path: str | os.PathLike) -> dict[str, list[str]]:
    """``term_dictionary.json``: class name → one-sentence definitions (used as referring descriptions)."""
    terms = read_json_object(path, "term dictionary")
    for name, definitions in terms.items():
        if not isinstance(definitions, list) or not definitions or not all(isinstance(d, str) for d in definitions):
            raise DataError(str(path), f"{name!r}: expected a non-empty list of definition strings")
    return terms


def _class_names(spec: dict, source: str) -> list[str]:
    labels = spec.get("labels")
    if not isinstance(labels, dict):
        raise DataError(source, "missing 'labels' object {'0': 'background', '1': <class>, …}")
    try:
        ordered = sorted((int(k), v) for k, v in labels.items() if int(k) > 0)
    except ValueError:
        raise DataError(source, f"'labels' keys must be integers, got {sorted(labels)}") from None
    if [k for k, _ in ordered] != list(range(1, len(ordered) + 1)):
        raise DataError(source, f"'labels' must number classes 1..N without gaps, got {[k for k, _ in ordered]}")
    return [str(v) for _, v in ordered]


def _split_entries(spec: dict, split: str, source: str) -> tuple[str, list]:
    for key in SPLIT_ALIASES.get(split, (split,)):
        if key in spec:
            if not isinstance(spec[key], list):
                raise DataError(source, f"'{key}' must be a list of {{image, label}} entries")
            return key, spec[key]
    keys = [k for k in spec if isinstance(spec[k], list)]
    raise DataError(source, f"no split {split!r} (also tried {SPLIT_ALIASES.get(split, ())}); lists present: {keys}")


def _seg_roots(path: Path, data_root: str | os.PathLike | None) -> list[Path]:
    """The folders a split file's relative paths are looked up in, in order (see :func:`read_seg_split`)."""
    roots = [Path(data_root) if data_root is not None else path.parent]
    if path.stem == path.parent.name:  # <seg_dir>/<code>/<code>.json
        roots.append(path.parent.parent)
    return list(dict.fromkeys(roots))


def read_seg_split(
    path: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None = None,
    check_files: bool = True,
    skip_invalid: bool = False,
    on_error: ErrorHandler | None = None,
) -> list[dict]:
    """Records of one split of a per-dataset JSON (``<code>/<code>.json``).

    LaMed-ready entries give ``{"image", "label", "class_index", "class_name", "dataset", "layout": "per_class"}``;
    raw-release entries (``.npz`` labels) give one record per case with ``"layout": "sparse"`` and
    ``"class_names"``.

    Args:
        path: the per-dataset JSON.
        split: ``"train"`` or ``"test"`` (aliases ``training``/``validation`` are looked up too), or any list key.
        data_root: the folder relative paths start from; defaults to the JSON's folder. Paths not found there are
            looked up in the M3D-Seg folder (the one holding ``<code>/<code>.json``), where ``m3d prepare m3d-seg``
            and the published layout start them, so one ``data_root`` serves a corpus whose other files start
            elsewhere.
        check_files: check that the referenced files exist.
        skip_invalid: count and log bad entries instead of raising.
        on_error: receives each bad entry's :class:`DataError` (overrides ``skip_invalid``).
    """
    path = Path(path)
    spec = read_json_object(path, "M3D-Seg dataset JSON")
    names = _class_names(spec, str(path))
    key, entries = _split_entries(spec, split, str(path))
    roots = _seg_roots(path, data_root)
    source = f"{path.name}['{key}']"
    handle, log = error_handler(f"{path}['{key}']", skip_invalid, on_error)
    records = []
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
                raise DataError(source, f"expected an object with 'image' and 'label', got {entry!r:.80}", i)
            image = resolve_path(entry["image"], roots, source, i, "image", check_files)
            label = resolve_path(entry["label"], roots, source, i, "label", check_files)
            record = {"image": image, "label": label, "dataset": path.stem, "row": i}
            if label.suffix == ".npz":
                record.update(layout="sparse", class_names=names)
            else:
                index = class_index_from_name(label)
                if index >= len(names):
                    raise DataError(source, f"mask index {index} but only {len(names)} classes in 'labels'", i)
                record.update(layout="per_class", class_index=index, class_name=names[index])
            records.append(record)
        except DataError as err:
            handle(err)
    log.log_summary()
    return records


class SegTaskDataset(RecordDataset):
    """Samples for the four mask-based tasks of one M3D-Seg dataset.

    ``ss`` (class name → ``[SEG]``), ``res`` (definition → ``[SEG]``), ``rec`` (class or definition → box) and
    ``reg`` (box → class or definition). ``box`` is the normalised (6,) box, NaN for a negative. A class absent from the image is a negative: its answer says so, with no
    ``[SEG]`` and no box. The mask (``seg``, bool (1, D, H, W)) goes through the transform with the image, and the box
    is taken from the transformed mask, so both always agree with the image the model sees.

    Args:
        records: per-class records from :func:`read_seg_split`.
        task: one of ``ss``, ``res``, ``rec``, ``reg``.
        term_dictionary: class name → definitions; required for ``res`` and for ``describe=True``.
        describe: use a definition instead of the class name in REC/REG questions (the "des" variants).
        answer_variants: use only the first that many answer templates per outcome (see
            :func:`~m3d_components.data.prompts.rec_example`); None uses all.
    """

    def __init__(
        self,
        records,
        task: str,
        term_dictionary: dict[str, list[str]] | None = None,
        describe: bool = False,
        transform=None,
        seed=None,
        image_shape=None,
        answer_variants: int | None = None,
    ) -> None:
        if task not in SEG_TASKS:
            raise ValueError(f"task must be one of {SEG_TASKS}, got {task!r}")
        if (task == "res" or describe) and not term_dictionary:
            raise ValueError(f"task {task!r} with describe={describe} needs a term_dictionary")
        sparse = [r for r in records if r.get("layout") != "per_class"]
        if sparse:
            raise DataError(
                str(sparse[0]["label"]), "raw M3D-Seg release layout; convert it first with `m3d prepare m3d-seg`"
            )
        super().__init__(records, transform, seed, image_shape)
        self.task = task
        self.terms = term_dictionary or {}
        self.describe = describe or task == "res"
        self.answer_variants = answer_variants

    def load(self, record: dict) -> Sample:
        sample = super().load(record)
        sample["seg"] = load_class_mask(record["label"], sample["image"].shape)
        sample.update(class_name=record["class_name"], dataset=record["dataset"], class_index=record["class_index"])
        return sample

    def _definition(self, name: str, rng: random.Random) -> str | None:
        if not self.describe:
            return None
        if name not in self.terms:
            raise DataError("term dictionary", f"no definition for class {name!r}")
        return rng.choice(self.terms[name])

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        seg = np.asarray(sample["seg"]).astype(bool)
        box = mask_box(seg)
        name = sample["class_name"]
        definition = self._definition(name, rng)
        variants = {"definition": definition, "answer_variants": self.answer_variants}
        if self.task in ("ss", "res"):
            question, answer = prompts.seg_example(name, box is not None, rng, **variants)
        elif self.task == "rec":
            question, answer = prompts.rec_example(name, box, rng, **variants)
        else:
            question, answer = prompts.reg_example(name, box, rng, **variants)
        # NaN marks "no box" so boxes of positives and negatives collate into one (B, 6) tensor.
        sample["box"] = np.asarray(box if box is not None else [np.nan] * 6, dtype=np.float32)
        sample.update(question=question, answer=answer, seg=seg)
        return sample


def average_box(records: Sequence[dict], image_shape: Sequence[int], limit: int | None = 2000) -> list[float]:
    """The mean normalised box of the positive masks among (the first ``limit``) records.

    It is the REC reference point a model must beat: predicting this one box for every question.

    Raises:
        DataError: when none of the records has a foreground voxel.
    """
    boxes = []
    for record in list(records)[:limit]:
        box = mask_box(load_class_mask(record["label"], tuple(image_shape)))
        if box is not None:
            boxes.append(box)
    if not boxes:
        raise DataError("segmentation records", "no positive mask to average a box over")
    return [round(float(v), 3) for v in np.mean(boxes, axis=0)]


def average_masks(
    records: Sequence[dict], image_shape: Sequence[int], limit_per_class: int | None = 200
) -> dict[str, np.ndarray]:
    """``"<dataset>/<class>"`` → the voxel-wise mean of its positive masks, thresholded at 0.5 (bool (1, D, H, W)).

    It is the segmentation reference point a model must beat: the same "typical" mask for every question about a
    class, whatever the image (first ``limit_per_class`` positives per class; classes without one are left out).
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for record in records:
        key = f"{record['dataset']}/{record['class_name']}"
        if limit_per_class is not None and counts.get(key, 0) >= limit_per_class:
            continue
        mask = load_class_mask(record["label"], tuple(image_shape))
        if mask.any():
            sums[key] = sums.get(key, 0) + mask.astype(np.float32)
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] >= 0.5 for key in sorted(sums)}
