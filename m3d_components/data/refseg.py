"""M3D-RefSeg: referring-expression segmentation rows (CSV) over integer region masks.

Columns: ``Image`` (the volume), ``Mask`` (an integer label map of the same shape), ``Mask_ID`` (the region's id in
it), ``Question_Type`` (0 description-based, 1 reasoning-based), ``Question``, ``Answer`` (containing one ``[SEG]``;
the ``<SEG>`` spelling that occurs in the generation prompts is read as ``[SEG]``). The target is ``Mask == Mask_ID``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd

from m3d_components.data import prompts
from m3d_components.data.dataset import RecordDataset, Sample
from m3d_components.data.errors import DataError
from m3d_components.data.records import ErrorHandler, error_handler, resolve_path
from m3d_components.data.tokens import SEG_TOKEN

__all__ = ["REFSEG_COLUMNS", "RefSegDataset", "load_region_mask", "read_refseg_csv"]

REFSEG_COLUMNS = ("Image", "Mask", "Mask_ID", "Question_Type", "Question", "Answer")


def _parse_row(row: dict, source: str, i: int) -> dict:
    try:
        mask_id = int(float(row["Mask_ID"]))
    except ValueError:
        raise DataError(source, f"'Mask_ID' is {row['Mask_ID']!r}, expected a positive integer", i) from None
    if mask_id <= 0:
        raise DataError(source, f"'Mask_ID' is {mask_id}, expected a positive integer (0 is background)", i)
    qtype_raw = row["Question_Type"].strip()
    if qtype_raw not in ("0", "1", "0.0", "1.0"):
        raise DataError(source, f"'Question_Type' is {qtype_raw!r}, expected 0 (description) or 1 (reasoning)", i)
    question = row["Question"].strip()
    answer = row["Answer"].strip().replace("<SEG>", SEG_TOKEN)
    if not question:
        raise DataError(source, "'Question' is empty", i)
    if answer.count(SEG_TOKEN) != 1:
        raise DataError(source, f"'Answer' must contain exactly one {SEG_TOKEN}, found {answer.count(SEG_TOKEN)}", i)
    return {"mask_id": mask_id, "question_type": int(float(qtype_raw)), "ref_question": question, "ref_answer": answer}


def read_refseg_csv(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    check_files: bool = True,
    skip_invalid: bool = False,
    on_error: ErrorHandler | None = None,
) -> list[dict]:
    """Records of an M3D-RefSeg CSV (row numbers are 0-based data rows).

    Args:
        path: the CSV.
        data_root: the folder ``Image``/``Mask`` paths start from; defaults to the CSV's folder.
        check_files: check that the referenced files exist.
        skip_invalid: count and log bad rows instead of raising.
        on_error: receives each bad row's :class:`DataError` (overrides ``skip_invalid``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "M3D-RefSeg CSV not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(str(path), f"cannot parse as CSV ({type(err).__name__}: {err})") from err
    missing = [c for c in REFSEG_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(str(path), f"missing column(s) {missing}; found {list(table.columns)}")
    root = Path(data_root) if data_root is not None else path.parent
    handle, log = error_handler(str(path), skip_invalid, on_error)
    records = []
    for i, row in enumerate(table.to_dict("records")):
        try:
            record = _parse_row(row, path.name, i)
            record["image"] = resolve_path(row["Image"], root, path.name, i, "Image", check_files)
            record["mask"] = resolve_path(row["Mask"], root, path.name, i, "Mask", check_files)
            records.append({**record, "row": i})
        except DataError as err:
            handle(err)
    log.log_summary()
    return records


def load_region_mask(path: str | os.PathLike, mask_id: int, image_shape: tuple[int, ...]) -> np.ndarray:
    """``mask == mask_id`` as bool (1, D, H, W).

    Raises:
        DataError: unreadable file, a shape other than the image's, or a region id absent from the mask.
    """
    path = Path(path)
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(str(path), "mask file not found") from None
    except Exception as err:
        raise DataError(str(path), f"cannot read as .npy ({type(err).__name__}: {err})") from err
    if tuple(labels.shape) != tuple(image_shape):
        raise DataError(str(path), f"mask shape {tuple(labels.shape)} does not match image shape {tuple(image_shape)}")
    region = np.asarray(labels) == mask_id
    if not region.any():
        raise DataError(str(path), f"region id {mask_id} does not occur in the mask")
    return region


class RefSegDataset(RecordDataset):
    """Referring-expression segmentation samples: ``image``, ``seg`` (the region), ``question``, ``answer``."""

    task = "refseg"

    def load(self, record: dict) -> Sample:
        sample = super().load(record)
        sample["seg"] = load_region_mask(record["mask"], record["mask_id"], sample["image"].shape)
        sample.update(ref_question=record["ref_question"], ref_answer=record["ref_answer"])
        sample["question_type"] = record["question_type"]
        return sample

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        sample["question"], sample["answer"] = prompts.refseg_example(sample["ref_question"], sample["ref_answer"])
        return sample
