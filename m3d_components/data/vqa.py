"""M3D-VQA: multiple-choice questions on M3D-Cap volumes, from the published CSV.

Columns (extra columns, such as the unnamed index or a checker's verdict, are ignored): ``Image Path``, ``Text``
(the source report, optional here), ``Question Type`` (1 plane, 2 phase/window, 3 organ, 4 abnormality,
5 position), ``Question``, ``Choice A``–``Choice D``, ``Answer`` (text of the right choice), ``Answer Choice``
(its letter). The same row serves the closed setting (choices in the prompt, target "B. Coronal") and the open one
(question only, target the answer text).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd

from m3d_components.data import prompts
from m3d_components.data.dataset import RecordDataset, Sample
from m3d_components.data.errors import DataError
from m3d_components.data.records import ErrorHandler, error_handler, resolve_path

__all__ = ["CHOICE_LETTERS", "QUESTION_TYPES", "VQA_COLUMNS", "VQADataset", "read_vqa_csv", "read_vqa_table"]

CHOICE_LETTERS = ("A", "B", "C", "D")
QUESTION_TYPES = {1: "plane", 2: "phase", 3: "organ", 4: "abnormality", 5: "position"}
VQA_COLUMNS = ("Image Path", "Question Type", "Question", *(f"Choice {c}" for c in CHOICE_LETTERS), "Answer", "Answer Choice")


def read_vqa_table(path: Path) -> pd.DataFrame:
    """The CSV as strings (empty cells stay ""), checked to hold the published columns; errors name the file."""
    if not path.is_file():
        raise DataError(str(path), "M3D-VQA CSV not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(str(path), f"cannot parse as CSV ({type(err).__name__}: {err})") from err
    missing = [c for c in VQA_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(str(path), f"missing column(s) {missing}; found {list(table.columns)}")
    return table


def _parse_row(row: dict, source: str, i: int) -> dict:
    raw_type = row["Question Type"].strip()
    try:
        qtype = int(float(raw_type))
    except ValueError:
        raise DataError(source, f"'Question Type' is {raw_type!r}, expected an integer 1–5", i) from None
    if qtype not in QUESTION_TYPES:
        raise DataError(source, f"'Question Type' is {qtype}, expected 1–5", i)
    question = row["Question"].strip()
    if not question:
        raise DataError(source, "'Question' is empty", i)
    letter = row["Answer Choice"].strip().upper()
    if letter not in CHOICE_LETTERS:
        raise DataError(source, f"'Answer Choice' is {row['Answer Choice']!r}, expected one of A–D", i)
    answer = row["Answer"].strip()
    chosen = row[f"Choice {letter}"].strip()
    if not answer:
        raise DataError(source, "'Answer' is empty", i)
    if chosen != answer:
        raise DataError(source, f"'Answer' {answer!r} differs from 'Choice {letter}' {chosen!r}", i)
    return {
        "question_type": qtype,
        "vqa_question": question,
        **{f"choice_{c}": row[f"Choice {c}"].strip() or "NA" for c in CHOICE_LETTERS},
        "answer_text": answer,
        "answer_letter": letter,
        "report": str(row.get("Text") or "").strip(),
    }


def read_vqa_csv(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    check_files: bool = True,
    question_types: tuple[int, ...] | None = None,
    skip_invalid: bool = False,
    on_error: ErrorHandler | None = None,
) -> list[dict]:
    """Records of an M3D-VQA CSV (row numbers in errors are 0-based data rows, i.e. file line − 2).

    Args:
        path: the CSV.
        data_root: the folder ``Image Path`` starts from; defaults to the CSV's folder.
        check_files: check that each referenced volume exists (each distinct path once).
        question_types: keep only these types (e.g. ``(1, 2)``); None keeps all.
        skip_invalid: count and log bad rows instead of raising.
        on_error: receives each bad row's :class:`DataError` (overrides ``skip_invalid``).
    """
    path = Path(path)
    table = read_vqa_table(path)
    root = Path(data_root) if data_root is not None else path.parent
    handle, log = error_handler(str(path), skip_invalid, on_error)
    seen: dict[str, Path] = {}
    records = []
    for i, row in enumerate(table.to_dict("records")):
        try:
            record = _parse_row(row, path.name, i)
            image = row["Image Path"]
            if image not in seen:
                seen[image] = resolve_path(image, root, path.name, i, "Image Path", check_files)
        except DataError as err:
            handle(err)
            continue
        if question_types is None or record["question_type"] in question_types:
            records.append({"image": seen[image], "row": i, **record})
    log.log_summary()
    return records


class VQADataset(RecordDataset):
    """Closed- or open-ended VQA samples.

    Text fields (``vqa_question``, ``choice_A``…``choice_D``, ``answer_text``) are in the sample before templating, so
    a laterality-swapping transform can rewrite them. Adds ``question``, ``answer``, ``question_type``,
    ``answer_letter`` (closed).

    Args:
        records: from :func:`read_vqa_csv`.
        closed: True → "question Choices: A. … D. …" with target "X. answer"; False → question only, target answer.
    """

    def __init__(self, records, closed: bool = True, transform=None, seed=None, image_shape=None) -> None:
        super().__init__(records, transform, seed, image_shape)
        self.closed = closed
        self.task = "vqa_closed" if closed else "vqa_open"

    def load(self, record: dict) -> Sample:
        sample = super().load(record)
        sample.update({k: v for k, v in record.items() if k not in ("image", "row")})
        return sample

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        choices = {c: sample[f"choice_{c}"] for c in CHOICE_LETTERS}
        sample["choices"] = choices
        if self.closed:
            sample["question"], sample["answer"] = prompts.closed_vqa_example(
                sample["vqa_question"], choices, sample["answer_letter"]
            )
        else:
            sample["question"], sample["answer"] = prompts.open_vqa_example(sample["vqa_question"], sample["answer_text"])
        return sample
