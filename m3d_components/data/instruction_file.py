"""Fixed segmentation-instruction files (``m3d generate seg-instructions`` writes them, the bundles read them).

Format ("m3d-instructions"): JSON Lines, one instruction per line, paths relative to the file's folder::

    {"task": "rec", "variant": "definition", "image": "0000/case_1/image.npy", "mask": "0000/case_1/masks/mask_0.npy",
     "dataset": "0000", "class_name": "liver", "question": "…", "answer": "… <bx_start>[…]<bx_end>",
     "box": [0.1, 0.2, 0.2, 0.6, 0.7, 0.8]}

``task`` is ``rec`` (text → box), ``reg`` (box → text), ``ss`` (class name → ``[SEG]``) or ``res`` (description →
``[SEG]``); ``variant`` is ``label`` or ``definition``; ``box`` is the normalised box of the mask, ``null`` for a
negative (a class absent from the image), whose answer then carries neither a box nor ``[SEG]``. Unlike the
on-the-fly templates of :class:`~m3d_components.data.seg.SegTaskDataset`, the wording is fixed, which lets users
review, edit or extend the data (e.g. with LLM rewordings). Training augmentation still works: the box written in
the text is re-derived from the augmented mask.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3d_components.data.boxes import format_box, mask_box
from m3d_components.data.dataset import RecordDataset, Sample
from m3d_components.data.errors import DataError
from m3d_components.data.masks import load_class_mask
from m3d_components.data.records import ErrorHandler, error_handler, resolve_path
from m3d_components.data.tokens import BOX_START, SEG_TOKEN

__all__ = [
    "INSTRUCTION_FIELDS",
    "INSTRUCTION_TASKS",
    "InstructionFileDataset",
    "instruction_file",
    "read_instruction_file",
]

INSTRUCTION_TASKS = ("rec", "reg", "ss", "res")
VARIANTS = ("label", "definition")
INSTRUCTION_FIELDS = ("task", "variant", "image", "mask", "dataset", "class_name", "question", "answer", "box")


def instruction_file(folder: str | os.PathLike, split: str) -> Path:
    """The file of one split in an output folder of ``m3d generate seg-instructions``."""
    return Path(folder) / f"seg_instructions_{split}.jsonl"


def _text(entry: dict, key: str, source: str, row: int) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(source, f"'{key}' must be a non-empty string, got {value!r:.60}", row)
    return value.strip()


def _box(value: object, source: str, row: int) -> list[float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 6
        or not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in value)
    ):
        raise DataError(source, f"'box' must be null or 6 numbers in [0, 1], got {value!r:.80}", row)
    return [float(v) for v in value]


def _parse(entry: object, source: str, row: int) -> dict:
    if not isinstance(entry, dict):
        raise DataError(source, f"expected a JSON object, got {type(entry).__name__}", row)
    missing = [k for k in INSTRUCTION_FIELDS if k not in entry]
    if missing:
        raise DataError(source, f"missing key(s) {missing}", row)
    task, variant = entry["task"], entry["variant"]
    if task not in INSTRUCTION_TASKS:
        raise DataError(source, f"'task' is {task!r}, expected one of {INSTRUCTION_TASKS}", row)
    if variant not in VARIANTS:
        raise DataError(source, f"'variant' is {variant!r}, expected one of {VARIANTS}", row)
    record = {k: _text(entry, k, source, row) for k in ("dataset", "class_name", "question", "answer")}
    box = _box(entry["box"], source, row)
    record.update(task=task, variant=variant, box=box)
    # The text must say what the box says: a positive names its box (REC answer, REG question) or asks for one
    # [SEG]; a negative does neither.
    if task in ("rec", "reg"):
        where = "answer" if task == "rec" else "question"
        if box is not None and format_box(box) not in record[where]:
            raise DataError(source, f"{task} {where} does not contain its box {format_box(box)}", row)
        if box is None and BOX_START in record["question"] + record["answer"]:
            raise DataError(source, f"negative {task} item (box null) writes a box", row)
    else:
        count = record["answer"].count(SEG_TOKEN)
        if count != (0 if box is None else 1):
            expected = "no [SEG] for a negative (box null)" if box is None else "exactly one [SEG]"
            raise DataError(source, f"{task} answer has {count} [SEG]; expected {expected}", row)
    return record


def read_instruction_file(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    check_files: bool = True,
    skip_invalid: bool = False,
    on_error: ErrorHandler | None = None,
) -> list[dict]:
    """Records of an instruction file (rows are 0-based lines).

    Args:
        path: the ``.jsonl`` file.
        data_root: the folder ``image``/``mask`` paths start from; defaults to the file's folder.
        tasks: keep only these tasks (None keeps all).
        check_files: check that the referenced files exist.
        skip_invalid: count and log bad lines instead of raising.
        on_error: receives each bad line's :class:`DataError` (overrides ``skip_invalid``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "instruction file not found (write it with `m3d generate seg-instructions`)")
    root = Path(data_root) if data_root is not None else path.parent
    handle, log = error_handler(str(path), skip_invalid, on_error)
    records, checked = [], {}
    with path.open(encoding="utf-8") as lines:
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(path.name, f"not valid JSON ({err})", i) from err
                record = _parse(entry, path.name, i)
                for key in ("image", "mask"):
                    value = _text(entry, key, path.name, i)
                    if value not in checked:
                        checked[value] = resolve_path(value, root, path.name, i, key, check_files)
                    record[key] = checked[value]
            except DataError as err:
                handle(err)
                continue
            if tasks is None or record["task"] in tasks:
                records.append({**record, "row": i})
    log.log_summary()
    return records


class InstructionFileDataset(RecordDataset):
    """Samples of one task from :func:`read_instruction_file` records: image, ``seg`` mask, fixed question/answer.

    The question and answer enter the transform with the image, so a laterality flip rewrites their "left"/"right";
    afterwards the box is taken from the transformed mask and written over the stored one in the text, and
    ``box`` holds it (NaN for a negative), exactly as :class:`~m3d_components.data.seg.SegTaskDataset` does.
    """

    def __init__(self, records, task: str, transform=None, seed=None, image_shape=None) -> None:
        if task not in INSTRUCTION_TASKS:
            raise ValueError(f"task must be one of {INSTRUCTION_TASKS}, got {task!r}")
        others = sorted({r["task"] for r in records} - {task})
        if others:
            raise ValueError(f"records of task(s) {others} given to a {task!r} dataset")
        super().__init__(records, transform, seed, image_shape)
        self.task = task

    def load(self, record: dict) -> Sample:
        sample = super().load(record)
        sample["seg"] = load_class_mask(record["mask"], sample["image"].shape)
        sample.update({k: record[k] for k in ("question", "answer", "class_name", "dataset")})
        sample["stored_box"] = record["box"]
        sample["row"] = record["row"]
        return sample

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        seg = np.asarray(sample["seg"]).astype(bool)
        stored, row = sample.pop("stored_box"), sample.pop("row")
        box = mask_box(seg)
        if (box is None) != (stored is None):
            raise DataError(
                str(sample["image_path"]), f"instruction row {row}: its mask no longer matches the stored box"
            )
        if box is not None and box != stored:
            for key in ("question", "answer"):
                sample[key] = sample[key].replace(format_box(stored), format_box(box))
        sample["box"] = np.asarray(box if box is not None else [np.nan] * 6, dtype=np.float32)
        sample["seg"] = seg
        return sample
