"""Write the demo corpus in every published M3D format, deterministically.

Layout under ``out_dir`` (all paths inside the files are relative to it, i.e. ``data_root = out_dir``)::

    images/{train,val,test}/<case>.npy, <case>.txt      M3D-Cap volumes (1, D, H, W) float32 and findings text
    M3D_Cap.json                                         {"train", "validation", "test", "test100", ...}
    M3D_VQA_{train,val,test}.csv                         M3D-VQA, question types 1-5
    M3D_Seg/dataset_info.json, term_dictionary.json      {"demo": [class names]}, {class: [definitions]}
    M3D_Seg/demo/demo.json                               Decathlon-style; one entry per (image, class)
    M3D_Seg/demo/<case>/masks/mask_<i>.npy               bool (1, D, H, W), or int8 (1, 1, 1, 1) zeros if absent
    M3D_RefSeg/<case>/mask.npy, text.json                uint8 region ids (1, D, H, W), {id: description}
    M3D_RefSeg_{train,val,test}.csv                      Image, Mask, Mask_ID, Question_Type, Question, Answer
    demo_attributes.json                                 per case: split, plane, phase, region, organs, lesion
    manifest.json                                        version, seed, size, counts, VQA tallies, blind accuracy

Randomness: the design of a split (which case shows what) and its answer-letter cycles come from
``SeedSequence([seed, split_id], spawn_key=(0, k))``; case ``i`` draws its anatomy and its text from
``SeedSequence([seed, split_id], spawn_key=(1, i, 0 | 1))``. Files are written atomically in a fixed order, so the
same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from m3d_components.data.demo.design import BalancedCycle, design_split
from m3d_components.data.demo.phantom import (
    CLASSES,
    DENSITIES,
    LESION_ORGANS,
    PARTS,
    PHASES,
    PLANES,
    REGION_ORGANS,
    REGIONS,
    Phantom,
    check_size,
    render_phantom,
)
from m3d_components.data.demo.text import (
    LETTERS,
    TERM_DICTIONARY,
    Question,
    refseg_questions,
    refseg_regions,
    report_text,
    seen_organ_pool,
    vqa_questions,
)
from m3d_components.data.volume import save_volume

__all__ = ["GENERATOR_VERSION", "ORIENTATION", "SEG_DATASET", "make_demo_data"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
SEG_DATASET = "demo"
# (key in M3D_Cap.json and the other JSON files, folder / file-name part, split id in the seed)
_SPLITS = (("train", "train", 0), ("validation", "val", 1), ("test", "test", 2))
_CAP_SUBSETS = (("test100", 100), ("test500", 500), ("test1k", 1000), ("test2k", 2000))
_VQA_COLUMNS = ("Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                "Answer", "Answer Choice")
_REFSEG_COLUMNS = ("Image", "Mask", "Mask_ID", "Question_Type", "Question", "Answer")
ORIENTATION = {
    "axial": ["superior -> inferior", "anterior -> posterior", "patient right -> left"],
    "coronal": ["anterior -> posterior", "superior -> inferior", "patient right -> left"],
    "sagittal": ["patient right -> left", "superior -> inferior", "anterior -> posterior"],
}


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    _write_bytes(path, buffer.getvalue())


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str], index: bool) -> None:
    frame = pd.DataFrame(rows, columns=list(columns))
    _write_bytes(path, frame.to_csv(index=index, lineterminator="\n").encode("utf-8"))


def _rng(seed: int, split_id: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split_id], spawn_key=key))


def _check_args(counts: dict[str, int], size: Sequence[int], seed: int) -> tuple[int, int, int]:
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if counts["n_train"] < 1:
        raise ValueError(f"n_train must be at least 1, got {counts['n_train']}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    size = tuple(size)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
        raise ValueError(f"size must be three integers (D, H, W), got {size!r}")
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def _seg_masks(phantom: Phantom) -> list[np.ndarray]:
    """Per class in ``CLASSES`` order: bool (1, D, H, W) when present, else the (1, 1, 1, 1) int8 negative marker."""
    masks = [phantom.labels == i + 1 for i in range(len(CLASSES) - 1)]
    masks.append(phantom.lesion if phantom.lesion is not None else np.zeros(phantom.labels.shape, dtype=bool))
    return [m[None] if m.any() else np.zeros((1, 1, 1, 1), dtype=np.int8) for m in masks]


def _refseg_labels(phantom: Phantom, regions: list) -> np.ndarray:
    """Integer label map (1, D, H, W) uint8: organ regions first, the lesion (id 1) painted over them."""
    out = np.zeros(phantom.labels.shape, dtype=np.uint8)
    for region in regions:
        if region.name in CLASSES:
            out[phantom.labels == CLASSES.index(region.name) + 1] = region.mask_id
    if phantom.lesion is not None:
        out[phantom.lesion] = 1
    return out[None]


class _Collector:
    """Accumulates the rows and entries of every index file while cases are written one by one."""

    def __init__(self) -> None:
        self.cap: dict[str, list[dict]] = {key: [] for key, _, _ in _SPLITS}
        self.vqa: dict[str, list[dict]] = {key: [] for key, _, _ in _SPLITS}
        self.questions: dict[str, list[Question]] = {key: [] for key, _, _ in _SPLITS}
        self.seg: dict[str, list[dict]] = {key: [] for key, _, _ in _SPLITS}
        self.refseg: dict[str, list[dict]] = {key: [] for key, _, _ in _SPLITS}
        self.attributes: dict[str, dict] = {}


def _write_case(out: Path, split: str, folder: str, case: str, phantom: Phantom, text_rng: np.random.Generator,
                cycles: dict, sink: _Collector) -> None:
    image = f"images/{folder}/{case}.npy"
    report = report_text(phantom.attributes, text_rng)
    save_volume(out / image, phantom.volume)
    _write_bytes(out / f"images/{folder}/{case}.txt", report.encode("utf-8"))
    sink.cap[split].append({"image": image, "text": f"images/{folder}/{case}.txt"})
    sink.attributes[case] = {"split": split, "image": image, **phantom.attributes}

    for q in vqa_questions(phantom.attributes, text_rng, cycles["letters"], cycles["seen"]):
        sink.questions[split].append(q)
        sink.vqa[split].append({"Image Path": image, "Text": report, "Question Type": q.question_type,
                                "Question": q.question, **{f"Choice {L}": c for L, c in zip(LETTERS, q.choices)},
                                "Answer": q.answer, "Answer Choice": q.letter})

    for i, mask in enumerate(_seg_masks(phantom)):
        label = f"M3D_Seg/{SEG_DATASET}/{case}/masks/mask_{i}.npy"
        _write_npy(out / label, mask)
        sink.seg[split].append({"image": image, "label": label})

    regions = refseg_regions(phantom.attributes)
    _write_npy(out / f"M3D_RefSeg/{case}/mask.npy", _refseg_labels(phantom, regions))
    _write_json(out / f"M3D_RefSeg/{case}/text.json", {str(r.mask_id): r.description for r in regions})
    for region in regions:
        for qtype, question, answer in refseg_questions(region, text_rng):
            sink.refseg[split].append({"Image": image, "Mask": f"M3D_RefSeg/{case}/mask.npy",
                                       "Mask_ID": region.mask_id, "Question_Type": qtype, "Question": question,
                                       "Answer": answer})


def _write_split(out: Path, split: str, folder: str, split_id: int, n: int, size: tuple[int, int, int], seed: int,
                 sink: _Collector) -> None:
    specs = design_split(n, _rng(seed, split_id, 0, 0))
    cycle_rng = _rng(seed, split_id, 0, 1)
    cycles = {"letters": {t: BalancedCycle(LETTERS, cycle_rng) for t in range(1, 6)},
              "seen": {r: BalancedCycle(seen_organ_pool(r), cycle_rng) for r in REGIONS}}
    for index, spec in enumerate(specs):
        phantom = render_phantom(spec, size, _rng(seed, split_id, 1, index, 0))
        _write_case(out, split, folder, f"{folder}_{index:05d}", phantom, _rng(seed, split_id, 1, index, 1), cycles,
                    sink)


def _cap_json(sink: _Collector) -> dict[str, list[dict]]:
    cap = dict(sink.cap)
    for key, k in _CAP_SUBSETS:
        if k == 100 or len(sink.cap["test"]) >= k:
            cap[key] = sink.cap["test"][:k]
    return cap


def _seg_json(sink: _Collector) -> dict:
    """Decathlon-style split file; the validation cases sit under an extra ``validation`` key."""
    n_images = {key: len(sink.cap[key]) for key, _, _ in _SPLITS}
    return {
        "name": SEG_DATASET,
        "description": "Synthetic CT-like phantoms of the M3D demo corpus (chest, upper and lower abdomen)",
        "tensorImageSize": "4D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i + 1): c for i, c in enumerate(CLASSES)}},
        "numTrain": n_images["train"],
        "numTest": n_images["test"],
        "train": sink.seg["train"],
        "test": sink.seg["test"],
        "validation": sink.seg["validation"],
    }


def _vqa_tallies(questions: list[Question]) -> dict[str, dict]:
    out = {}
    for qtype in range(1, 6):
        rows = [q for q in questions if q.question_type == qtype]
        out[str(qtype)] = {
            "rows": len(rows),
            "answers": dict(sorted(Counter(q.answer for q in rows).items())),
            "letters": {L: sum(q.letter == L for q in rows) for L in LETTERS},
        }
    return out


def _blind_accuracy(questions: list[Question]) -> dict[str, float]:
    """Per type, the mean over questions of the best accuracy an image-free model can reach (1/3 or 1/4)."""
    out = {}
    for qtype in range(1, 6):
        values = [q.blind_accuracy for q in questions if q.question_type == qtype]
        out[str(qtype)] = round(float(np.mean(values)), 4) if values else None
    return out


def _manifest(sink: _Collector, size: tuple[int, int, int], seed: int) -> dict:
    keys = [key for key, _, _ in _SPLITS]
    folders = {key: folder for key, folder, _ in _SPLITS}
    every_question = [q for key in keys for q in sink.questions[key]]
    return {
        "generator": "m3d_components.data.demo",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": list(size),
        "splits": {key: len(sink.cap[key]) for key in keys},
        "classes": list(CLASSES),
        "vocabulary": {"planes": list(PLANES), "phases": list(PHASES), "regions": list(REGIONS),
                       "region_organs": {r: list(o) for r, o in REGION_ORGANS.items()},
                       "lesion_organs": list(LESION_ORGANS), "densities": list(DENSITIES), "parts": list(PARTS)},
        "orientation": {"axes": ["D", "H", "W"], **ORIENTATION},
        "files": {"cap": "M3D_Cap.json", "vqa": {k: f"M3D_VQA_{folders[k]}.csv" for k in keys},
                  "seg": f"M3D_Seg/{SEG_DATASET}/{SEG_DATASET}.json",
                  "refseg": {k: f"M3D_RefSeg_{folders[k]}.csv" for k in keys}, "attributes": "demo_attributes.json"},
        "counts": {
            "lesion_cases": {k: sum(a["lesion"] is not None for a in sink.attributes.values() if a["split"] == k)
                             for k in keys},
            "vqa_rows": {k: len(sink.vqa[k]) for k in keys},
            "seg_entries": {k: len(sink.seg[k]) for k in keys},
            "refseg_rows": {k: len(sink.refseg[k]) for k in keys},
        },
        "vqa": {k: _vqa_tallies(sink.questions[k]) for k in keys},
        "blind_accuracy": _blind_accuracy(every_question),
    }


def _write_indexes(out: Path, sink: _Collector, manifest: dict) -> None:
    _write_json(out / "M3D_Cap.json", _cap_json(sink))
    for key, folder, _ in _SPLITS:
        _write_csv(out / f"M3D_VQA_{folder}.csv", sink.vqa[key], _VQA_COLUMNS, index=True)
        _write_csv(out / f"M3D_RefSeg_{folder}.csv", sink.refseg[key], _REFSEG_COLUMNS, index=False)
    _write_json(out / "M3D_Seg/dataset_info.json", {SEG_DATASET: list(CLASSES)})
    _write_json(out / "M3D_Seg/term_dictionary.json", TERM_DICTIONARY)
    _write_json(out / f"M3D_Seg/{SEG_DATASET}/{SEG_DATASET}.json", _seg_json(sink))
    _write_json(out / "demo_attributes.json", sink.attributes)
    _write_json(out / "manifest.json", manifest)


def make_demo_data(out_dir: str | os.PathLike, n_train: int = 800, n_val: int = 40, n_test: int = 100,
                   size: Sequence[int] = (32, 64, 64), seed: int = 0) -> dict:
    """Generate the synthetic demo corpus in the M3D-Cap, -VQA, -Seg and -RefSeg formats.

    The defaults give a test split of 100 (one ITR pool of 100) and enough training cases for a tiny ViT to learn the
    lesion questions (a 300-case training set overfits); they take about 20 s and 1.2 GB. Existing files of the same
    names are overwritten; other files in ``out_dir`` are left alone.

    Args:
        out_dir: output folder (the ``data_root`` every path in the written files is relative to).
        n_train, n_val, n_test: cases per split (``n_train`` >= 1).
        size: (D, H, W) of every volume, at least (16, 32, 32); (32, 256, 256) is the paper's shape.
        seed: non-negative integer; the same seed gives byte-identical files.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        ValueError: a negative count, a bad seed, or a size too small for the organs.
    """
    counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    size = check_size(_check_args(counts, size, seed))
    out = Path(out_dir)
    sink = _Collector()
    for (key, folder, split_id), n in zip(_SPLITS, counts.values()):
        start = time.perf_counter()
        _write_split(out, key, folder, split_id, int(n), size, int(seed), sink)
        logger.info("demo corpus: wrote %d %s case(s) of size %s in %.1f s", n, key, size,
                    time.perf_counter() - start)
    manifest = _manifest(sink, size, int(seed))
    _write_indexes(out, sink, manifest)
    logger.info("demo corpus written to %s (%s)", out, manifest["counts"])
    return manifest
