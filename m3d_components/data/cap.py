"""M3D-Cap: image–report pairs from the published split JSON.

``M3D_Cap.json`` maps split names (``train``, ``validation``, ``test`` and the subsets ``test100``, ``test500``,
``test1k``, ``hard_test``) to lists of ``{"image": <.npy>, "text": <.txt>}`` with paths relative to ``data_root``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from m3d_components.data import prompts
from m3d_components.data.dataset import RecordDataset, Sample
from m3d_components.data.errors import DataError
from m3d_components.data.records import ErrorHandler, error_handler, resolve_path
from m3d_components.data.report import extract_findings, shorten_report

__all__ = ["CapDataset", "load_report", "permute_texts", "read_cap_json", "read_cap_split"]


def read_cap_json(path: str | os.PathLike) -> dict[str, list]:
    """Read the split JSON and check its top-level shape (an object of lists)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "M3D-Cap split file not found")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(str(path), f"not valid JSON ({err})") from err
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise DataError(str(path), "expected an object mapping split names to lists of {image, text} entries")
    return splits


def read_cap_split(
    path: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None = None,
    check_files: bool = True,
    skip_invalid: bool = False,
    on_error: ErrorHandler | None = None,
) -> list[dict]:
    """Records ``{"image": Path, "text_path": Path}`` of one split.

    Args:
        path: ``M3D_Cap.json``.
        split: a key of that file, e.g. ``"train"`` or ``"test100"``.
        data_root: the folder the relative paths start from; defaults to the JSON's folder.
        check_files: check that every referenced file exists (off for a text-only check).
        skip_invalid: count and log bad entries instead of raising.
        on_error: receives each bad entry's :class:`DataError` (overrides ``skip_invalid``).
    """
    splits = read_cap_json(path)
    if split not in splits:
        raise DataError(str(path), f"no split {split!r}; the file has {sorted(splits)}")
    root = Path(data_root) if data_root is not None else Path(path).parent
    handle, log = error_handler(f"{path}['{split}']", skip_invalid, on_error)
    records = []
    for i, entry in enumerate(splits[split]):
        source = f"{Path(path).name}['{split}']"
        try:
            if not isinstance(entry, dict) or not {"image", "text"} <= entry.keys():
                raise DataError(source, f"expected an object with 'image' and 'text', got {entry!r:.80}", i)
            records.append(
                {
                    "image": resolve_path(entry["image"], root, source, i, "image", check_files),
                    "text_path": resolve_path(entry["text"], root, source, i, "text", check_files),
                    "row": i,
                }
            )
        except DataError as err:
            handle(err)
    log.log_summary()
    return records


def permute_texts(records: list[dict], seed: int) -> list[dict]:
    """The same records with reports re-assigned to images by a seeded random permutation.

    A control: a model trained on these pairings can only learn the text and image marginals, so its retrieval must
    stay at chance — if it does not, the evaluation leaks.
    """
    order = random.Random(seed).sample(range(len(records)), len(records))
    return [{**record, "text_path": records[j]["text_path"]} for record, j in zip(records, order)]


def load_report(path: str | os.PathLike, max_words: int | None = None) -> str:
    """A report's findings text (M3D-Cap's study_findings/discussion rule), optionally shortened sentence-wise."""
    path = Path(path)
    try:
        text = extract_findings(path.read_text(encoding="utf-8", errors="strict"))
    except FileNotFoundError as err:
        raise DataError(str(path), "report text file not found") from err
    except UnicodeDecodeError as err:
        raise DataError(str(path), f"report is not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not text:
        raise DataError(str(path), "report text is empty")
    return shorten_report(text, max_words) if max_words else text


class CapDataset(RecordDataset):
    """Report generation samples: ``image``, ``text`` (the report), ``question`` (a caption request), ``answer``.

    Args:
        records: from :func:`read_cap_split`.
        max_words: shorten reports to whole sentences within this many words (None keeps them whole).
        Other args: see :class:`~m3d_components.data.dataset.RecordDataset`.
    """

    task = "caption"

    def __init__(self, records, transform=None, seed=None, image_shape=None, max_words: int | None = None) -> None:
        super().__init__(records, transform, seed, image_shape)
        self.max_words = max_words

    def load(self, record: dict) -> Sample:
        return {**super().load(record), "text": load_report(record["text_path"], self.max_words)}

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        sample["question"], sample["answer"] = prompts.caption_example(sample["text"], rng)
        return sample
