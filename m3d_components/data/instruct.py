"""The LaMed task datasets of one split, built from the published files in one call.

Bundle configs name the files and the tasks; this module turns them into ``{task: dataset}`` for
:class:`~m3d_components.data.mixture.TaskMixture` (training) or
:func:`~m3d_components.data.mixture.evaluation_suite` (validation, test). REC and REG each combine the class-name and
the definition ("des") variants over every M3D-Seg dataset given, templated on the fly — or, when a folder written by
``m3d generate seg-instructions`` is given, come from its fixed instruction files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from m3d_components.data.cap import CapDataset, read_cap_split
from m3d_components.data.instruction_file import InstructionFileDataset, instruction_file, read_instruction_file
from m3d_components.data.refseg import RefSegDataset, read_refseg_csv
from m3d_components.data.seg import SegTaskDataset, read_seg_split, read_term_dictionary
from m3d_components.data.vqa import VQADataset, read_vqa_csv

__all__ = ["INSTRUCTION_TASKS", "MASK_TASKS", "find_seg_jsons", "instruction_datasets"]

INSTRUCTION_TASKS = ("caption", "vqa_closed", "vqa_open", "rec", "reg", "ss", "res", "refseg")
MASK_TASKS = ("rec", "reg", "ss", "res")  # built from M3D-Seg masks (or instruction files)
# Text fields a laterality-swapping flip must rewrite together with the image.
TEXT_KEYS = (
    "text", "vqa_question", "choice_A", "choice_B", "choice_C", "choice_D", "answer_text", "class_name", "question",
    "answer",
)


def find_seg_jsons(seg_dir: str | os.PathLike) -> list[str]:
    """Every per-dataset ``<code>/<code>.json`` under an M3D-Seg folder, sorted."""
    found = sorted(
        p for p in glob.glob(os.path.join(str(seg_dir), "*", "*.json")) if Path(p).stem == Path(p).parent.name
    )
    if not found:
        raise FileNotFoundError(f"no <code>/<code>.json dataset file under {seg_dir}")
    return found


def instruction_datasets(
    tasks: Sequence[str],
    split: str,
    *,
    cap_json: str | os.PathLike | None = None,
    vqa_csv: str | os.PathLike | None = None,
    seg_jsons: Sequence[str | os.PathLike] = (),
    term_dictionary: str | os.PathLike | None = None,
    seg_instructions_dir: str | os.PathLike | None = None,
    refseg_csv: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    seg_transform: Callable | None = None,
    seed: int | None = None,
    image_shape: Sequence[int] | None = None,
    max_report_words: int | None = None,
    answer_variants: int | None = None,
) -> dict[str, torch.utils.data.Dataset]:
    """``{task: dataset}`` for ``tasks`` ⊆ :data:`INSTRUCTION_TASKS` on ``split``.

    The mask tasks — rec, reg (boxes), ss (class name → ``[SEG]``), res (definition → ``[SEG]``) — come from M3D-Seg
    masks; refseg (M3D-RefSeg referring expressions → ``[SEG]``) from its CSV. Samples of ss, res and refseg carry
    their target mask as ``seg``.

    Args:
        cap_json: M3D-Cap split JSON (caption task); ``split`` is one of its keys.
        vqa_csv: the M3D-VQA CSV of this split (VQA tasks).
        seg_jsons: M3D-Seg per-dataset JSON files (mask tasks); ``split`` is read with the train/test aliases.
        term_dictionary: class → definitions, for the definition variants of REC/REG and for RES.
        seg_instructions_dir: a folder of ``seg_instructions_<split>.jsonl``; when given, the mask tasks come from
            it (paths relative to the file) and ``seg_jsons``/``term_dictionary`` are not needed.
        refseg_csv: the M3D-RefSeg CSV of this split (refseg task).
        data_root: the folder image paths start from (default: each index file's folder).
        transform: the transform of image-only samples (caption, VQA).
        seg_transform: the transform of samples with a mask, moving the ``seg`` mask with the image (default:
            ``transform``).
        seed, image_shape: passed to every dataset (see ``RecordDataset``).
        max_report_words: shorten reports (caption targets) to whole sentences within this many words.
        answer_variants: answer templates per outcome of the templated mask tasks (None: all); see
            :func:`~m3d_components.data.prompts.rec_example`.

    Raises:
        ValueError: an unknown task, or a task whose input file is not given.
    """
    unknown = sorted(set(tasks) - set(INSTRUCTION_TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {INSTRUCTION_TASKS}")
    common = {"transform": transform, "seed": seed, "image_shape": image_shape}
    seg_common = {**common, "transform": seg_transform if seg_transform is not None else transform}
    out: dict[str, torch.utils.data.Dataset] = {}

    def need(value, what: str, task: str):
        if not value:
            raise ValueError(f"task {task!r} needs {what}")
        return value

    if "caption" in tasks:
        records = read_cap_split(need(cap_json, "cap_json", "caption"), split, data_root)
        out["caption"] = CapDataset(records, max_words=max_report_words, **common)
    vqa_tasks = [t for t in ("vqa_closed", "vqa_open") if t in tasks]
    if vqa_tasks:
        records = read_vqa_csv(need(vqa_csv, "vqa_csv", vqa_tasks[0]), data_root)
        for task in vqa_tasks:
            out[task] = VQADataset(records, closed=task == "vqa_closed", **common)
    seg_tasks = [t for t in MASK_TASKS if t in tasks]
    if seg_tasks and seg_instructions_dir is not None:
        records = read_instruction_file(instruction_file(seg_instructions_dir, split), tasks=seg_tasks)
        for task in seg_tasks:
            out[task] = InstructionFileDataset([r for r in records if r["task"] == task], task, **seg_common)
    elif seg_tasks:
        paths = need(seg_jsons, "seg_jsons", seg_tasks[0])
        records = [r for path in paths for r in read_seg_split(path, split, data_root)]
        terms = None
        if {"rec", "reg", "res"} & set(seg_tasks):
            terms = read_term_dictionary(need(term_dictionary, "term_dictionary", seg_tasks[0]))
        for task in seg_tasks:
            # REC/REG in both variants (class name, definition); SS by class name; RES by definition
            variants = (False, True) if task in ("rec", "reg") else (task == "res",)
            parts = [SegTaskDataset(records, task, terms, describe=d, answer_variants=answer_variants, **seg_common)
                     for d in variants]
            out[task] = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    if "refseg" in tasks:
        records = read_refseg_csv(need(refseg_csv, "refseg_csv", "refseg"), data_root)
        out["refseg"] = RefSegDataset(records, **seg_common)
    return out
