"""``m3d generate``: instruction data for the user's own scans — VQA from reports, the LLM check, mask instructions.

The LLM work is resumable: every finished report (or checked row) is appended to ``<out>.progress.jsonl`` together
with the raw LLM reply, so a rerun after an interruption skips what is done, and what the model wrote stays
auditable. The CSV rows of a report are written before its progress line, and a rerun first drops CSV rows whose
report has no progress line, so a crash between the two writes neither loses nor duplicates rows.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from m3d_components.data.boxes import mask_box
from m3d_components.data.cap import load_report, read_cap_split
from m3d_components.data.errors import DataError
from m3d_components.data.generation import check as vqa_check
from m3d_components.data.generation.paraphrase import paraphrase_prompt, parse_paraphrases
from m3d_components.data.generation.seg_instructions import instructions_for, merged_term_dictionary
from m3d_components.data.generation.vqa import (
    FILTERS,
    GUIDED_LAYOUT,
    REPLY_PREFIX,
    FilterLimits,
    continue_layout,
    filter_drafts,
    parse_reply,
    question_prompts,
)
from m3d_components.data.instruct import find_seg_jsons
from m3d_components.data.instruction_file import instruction_file
from m3d_components.data.masks import load_class_mask
from m3d_components.data.report import shorten_report
from m3d_components.data.seg import SPLIT_ALIASES, read_json_object, read_seg_split
from m3d_components.data.vqa import CHOICE_LETTERS, QUESTION_TYPES, read_vqa_csv, read_vqa_table
from m3d_components.models.chat import ChatLM

__all__ = ["VQA_CSV_COLUMNS", "check_vqa", "generate_seg_instructions", "generate_vqa", "progress_path"]

logger = logging.getLogger(__name__)

VQA_CSV_COLUMNS = (
    "Image Path", "Text", "Question Type", "Question", *(f"Choice {c}" for c in CHOICE_LETTERS), "Answer",
    "Answer Choice",
)


def progress_path(out: str | os.PathLike) -> Path:
    """Where the resumable record of an output file lives."""
    return Path(f"{out}.progress.jsonl")


def _start_progress(out: Path) -> list[dict]:
    """The finished entries of an earlier run (creating the progress file first, so that any output written later
    always has one). A last line cut short by a crash is removed: its item is done again."""
    progress = progress_path(out)
    if not progress.is_file():
        if out.exists():
            raise FileExistsError(
                f"{out} exists but has no {progress.name} to resume from; remove it or pick another --out"
            )
        progress.touch()
        return []
    lines = progress.read_text(encoding="utf-8").splitlines()
    entries = []
    for i, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise DataError(str(progress), "damaged progress line; remove the file to start again", i) from None
            _replace(progress, "".join(f"{kept}\n" for kept in lines[:-1]))
    return entries


def _replace(path: Path, text: str) -> None:
    """Write a file whole or not at all (a crash leaves the old version)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _append(path: Path, entries: Iterable[dict]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _chat(llm: ChatLM | str | os.PathLike, batch_size: int, max_new_tokens: int) -> ChatLM:
    """A loaded LLM as it is (anything with ChatLM's ``complete``), or load one from a local path."""
    if hasattr(llm, "complete"):
        return llm
    return ChatLM.from_local(llm, batch_size=batch_size, max_new_tokens=max_new_tokens)


def _guided_replies(chat: ChatLM, prompts: list, max_new_tokens: int, batch_size: int) -> list[str]:
    """Question line, choices line, answer line: each step continues every prompt's reply so far (GUIDED_LAYOUT)."""
    prefixes = [REPLY_PREFIX] * len(prompts)
    for keep, follow, stop in GUIDED_LAYOUT:
        replies = chat.complete(prompts, max_new_tokens, batch_size, prefix=prefixes, stop=stop)
        prefixes = [continue_layout(r, p, keep, follow) for r, p in zip(replies, prefixes)]
    return prefixes


def generate_vqa(
    reports: str | os.PathLike,
    llm: ChatLM | str | os.PathLike,
    out: str | os.PathLike,
    split: str = "train",
    data_root: str | os.PathLike | None = None,
    n_questions: int = 9,
    max_report_words: int = 400,
    batch_size: int = 4,
    max_new_tokens: int = 64,
    limits: FilterLimits = FilterLimits(),
    limit: int | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Write M3D-VQA rows for every report of an M3D-Cap split; resumable.

    Args:
        reports: the M3D-Cap split JSON.
        llm: a :class:`ChatLM` or the local path of an instruction-tuned causal LM (folder or GGUF).
        out: the VQA CSV to write (``Image Path`` is written relative to its folder).
        split: the split of ``reports`` to use.
        data_root: the folder the split JSON's paths start from (default: its folder).
        n_questions: questions asked per report (the plan of types is fixed, see ``TOPIC_PLAN``).
        max_report_words: reports are shortened sentence-wise to this many words for the prompt.
        batch_size: reports per batch (each gives ``n_questions`` prompts, generated together).
        max_new_tokens: length limit of each line of a reply (question, choices, answer).
        limits: the length rule.
        limit: process at most this many reports of the split (the first ones).
        skip_invalid: count and log unreadable report entries and report files instead of stopping.

    Returns:
        The summary over the whole output (earlier runs included): reports, questions asked, kept, removed per rule,
        kept per question type and per answer letter.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = read_cap_split(reports, split, data_root, skip_invalid=skip_invalid)[:limit]
    key = {id(r): Path(os.path.relpath(r["image"], out.parent)).as_posix() for r in records}
    question_prompts("check", n_questions)  # a bad count fails before anything is loaded
    done = {e["image"] for e in _start_progress(out)}
    if out.exists():  # rows of a report without a progress line (a crash between the two writes) go
        table = read_vqa_table(out)
        _replace(out, table[table["Image Path"].isin(done)].to_csv(index=False))
    todo = [r for r in records if key[id(r)] not in done]
    logger.info("%d reports in %s[%r]; %d done earlier, %d to go", len(records), reports, split, len(done), len(todo))
    chat = _chat(llm, batch_size, max_new_tokens) if todo else None
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="vqa", unit="report")
    for start in range(0, len(todo), batch_size):
        chunk, rows, entries = [], [], []
        for record in todo[start:start + batch_size]:
            try:
                record["report"] = load_report(record["text_path"], max_report_words)
                # the guided layout's last step holds the question and choices lines too: leave room for all three
                if chat.too_long(question_prompts(record["report"], n_questions), 3 * max_new_tokens):
                    raise DataError(str(record["text_path"]), "report too long for the LLM's context with the "
                                    "prompt; lower --max_report_words")
                chunk.append(record)
            except DataError as err:
                if not skip_invalid:
                    raise
                logger.warning("skipped report: %s", err)
                entries.append({"image": key[id(record)], "asked": 0, "kept": 0, "removed": {}, "error": str(err)})
        texts = [r["report"] for r in chunk]
        prompts = [p for t in texts for p in question_prompts(t, n_questions)]
        replies = _guided_replies(chat, prompts, max_new_tokens, batch_size * n_questions) if prompts else []
        for i, (record, text) in enumerate(zip(chunk, texts)):
            mine = replies[i * n_questions:(i + 1) * n_questions]
            drafts = [parse_reply(reply, number) for number, reply in enumerate(mine, start=1)]
            kept, removed = filter_drafts(drafts, limits, n_questions)
            rows += [item.row(key[id(record)], text) for item in kept]
            entries.append({"image": key[id(record)], "asked": len(drafts), "kept": len(kept),
                            "removed": dict(removed), "replies": mine})
        if rows:
            table = pd.DataFrame(rows, columns=list(VQA_CSV_COLUMNS))
            table.to_csv(out, mode="a", header=not out.exists(), index=False)
        _append(progress_path(out), entries)
        bar.update(len(entries))
    bar.close()
    if not out.exists():
        pd.DataFrame(columns=list(VQA_CSV_COLUMNS)).to_csv(out, index=False)
    return _vqa_summary(out, len(records), len(done))


def _vqa_summary(out: Path, n_reports: int, resumed: int) -> dict:
    entries = _start_progress(out)
    removed = Counter({name: 0 for name in FILTERS})
    for e in entries:
        removed.update(e["removed"])
    table = read_vqa_table(out)
    summary = {
        "out": str(out),
        "reports": n_reports,
        "reports_done": len(entries),
        "resumed_from": resumed,
        "reports_skipped": sum(1 for e in entries if "error" in e),
        "questions_asked": sum(e["asked"] for e in entries),
        "kept": len(table),
        "removed": dict(removed),
        "kept_by_type": {QUESTION_TYPES[int(k)]: int(v) for k, v in table["Question Type"].value_counts().items()},
        "kept_by_letter": {k: int(v) for k, v in table["Answer Choice"].value_counts().sort_index().items()},
    }
    Path(f"{out}.summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def check_vqa(
    vqa: str | os.PathLike,
    llm: ChatLM | str | os.PathLike,
    out: str | os.PathLike | None = None,
    passed_out: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    max_report_words: int | None = 400,
    limit: int | None = None,
) -> dict:
    """The LLM's second check of every VQA row: a copy of the CSV with ``Check`` (1/0/−1) and ``Check Reason``.

    Args:
        vqa: an M3D-VQA CSV whose ``Text`` column holds the source reports.
        llm: a :class:`ChatLM` or a local LLM path.
        out: the checked CSV (default ``<vqa stem>_checked.csv`` beside the input); resumable.
        passed_out: also write only the rows that passed here.
        batch_size, max_new_tokens: generation settings.
        max_report_words: shorten reports in the prompt (whole sentences).
        limit: check only the first rows.

    Returns:
        The pass-rate summary (``pass_rate`` beside the paper's 99.4 %), also per question type.
    """
    vqa = Path(vqa)
    out = Path(out) if out is not None else vqa.with_name(f"{vqa.stem}_checked.csv")
    records = read_vqa_csv(vqa, check_files=False)[:limit]
    missing = [r["row"] for r in records if not r["report"]]
    if missing:
        raise DataError(str(vqa), f"'Text' (the source report) is empty in rows {missing[:10]}; the check needs it")
    verdicts = {e["row"]: e for e in _start_progress(out)}
    stale = [r["row"] for r in records if r["row"] in verdicts and verdicts[r["row"]]["question"] != r["vqa_question"]]
    if stale:
        raise DataError(str(progress_path(out)), f"rows {stale[:10]} were checked with other questions: the progress "
                        f"belongs to another CSV; remove it or pick another --out")
    todo = [r for r in records if r["row"] not in verdicts]
    chat = _chat(llm, batch_size, max_new_tokens) if todo else None
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="check", unit="item")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        prompts = [
            vqa_check.check_prompt(
                shorten_report(r["report"], max_report_words) if max_report_words else r["report"],
                r["vqa_question"], {c: r[f"choice_{c}"] for c in CHOICE_LETTERS}, r["answer_letter"],
            )
            for r in chunk
        ]
        entries = []
        replies = chat.complete(prompts, max_new_tokens, batch_size, prefix=vqa_check.REPLY_PREFIX)
        for record, reply in zip(chunk, replies):
            verdict, reason = vqa_check.parse_verdict(reply[len(vqa_check.REPLY_PREFIX):])
            entries.append({"row": record["row"], "question": record["vqa_question"], "verdict": verdict,
                            "reason": reason, "reply": reply})
        _append(progress_path(out), entries)
        verdicts.update({e["row"]: e for e in entries})
        bar.update(len(chunk))
    bar.close()
    table = read_vqa_table(vqa).iloc[[r["row"] for r in records]]
    table["Check"] = [verdicts[r["row"]]["verdict"] for r in records]
    table["Check Reason"] = [verdicts[r["row"]]["reason"] for r in records]
    _replace(out, table.to_csv(index=False))
    if passed_out is not None:
        table[table["Check"] == 1].drop(columns=list(vqa_check.CHECK_COLUMNS)).to_csv(passed_out, index=False)
    by_type: dict[str, list[int]] = {}
    for record in records:
        by_type.setdefault(QUESTION_TYPES[record["question_type"]], []).append(verdicts[record["row"]]["verdict"])
    return {
        "out": str(out),
        **vqa_check.pass_rate_summary(list(table["Check"])),
        "by_type": {name: vqa_check.pass_rate_summary(v)["pass_rate"] for name, v in by_type.items()},
    }


def _reworded_terms(
    terms: dict[str, list[str]], classes: Sequence[str], llm: ChatLM, n: int, batch_size: int
) -> tuple[dict, dict]:
    """Each definition of ``classes`` plus up to ``n`` LLM rewordings of it, and counts of what was kept."""
    pairs = [(name, d) for name in classes for d in terms.get(name, [])]
    replies = llm.complete([paraphrase_prompt(d, n) for _, d in pairs], 40 * n, batch_size)
    enhanced = {name: list(terms.get(name, [])) for name in classes}
    for (name, definition), reply in zip(pairs, replies):
        enhanced[name] += [r for r in parse_paraphrases(reply, definition, n) if r not in enhanced[name]]
    added = sum(len(enhanced[name]) - len(terms.get(name, [])) for name in classes)
    return {**terms, **enhanced}, {"definitions": len(pairs), "asked": len(pairs) * n, "kept": added}


def _volume_shape(path: str) -> tuple[int, ...]:
    """The shape of a canonical ``.npy`` volume, read from its header only."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except Exception as err:
        raise DataError(path, f"cannot read as .npy ({type(err).__name__}: {err})") from err


def _split_present(path: str, split: str) -> bool:
    spec = read_json_object(path, "M3D-Seg dataset JSON")
    return any(key in spec for key in SPLIT_ALIASES.get(split, (split,)))


def generate_seg_instructions(
    seg_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "validation", "test"),
    data_root: str | os.PathLike | None = None,
    terms: Sequence[str | os.PathLike] = (),
    builtin_terms: bool = True,
    seed: int = 0,
    enhance_llm: ChatLM | str | os.PathLike | None = None,
    rewordings: int = 3,
    batch_size: int = 8,
) -> dict:
    """Write ``seg_instructions_<split>.jsonl`` (REC, REG, SS, RES; label and definition variants; negatives).

    Args:
        seg_dir: an M3D-Seg folder in the LaMed-ready layout (``m3d prepare m3d-seg`` converts the raw release).
        out_dir: where the instruction files go (paths inside are relative to it).
        splits: the splits to write; a dataset without a split is skipped for it (listed in the summary).
        data_root: the folder the dataset JSONs' relative paths start from (default: ``seg_dir``).
        terms: term dictionaries to add, later ones winning; ``<seg_dir>/term_dictionary.json`` is used first when
            present.
        builtin_terms: start from the package's organ definitions.
        seed: template and definition draws are a function of (seed, dataset, split, row): same input, same file.
        enhance_llm: a local LLM (or its path) that rewords each definition ``rewordings`` times (``--enhance``).
        rewordings, batch_size: rewording settings.

    Returns:
        Counts per split (instructions per task/variant, positives, negatives), the classes that had no definition,
        and the rewording counts.
    """
    seg_dir, out_dir = Path(seg_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = seg_dir / "term_dictionary.json"
    dictionary = merged_term_dictionary([*([shipped] if shipped.is_file() else []), *terms], builtin_terms)
    datasets = find_seg_jsons(seg_dir)
    by_split, without_split = {}, {}
    for split in splits:
        records = []
        for path in datasets:
            if _split_present(path, split):
                records += read_seg_split(path, split, data_root if data_root is not None else seg_dir)
            else:
                without_split.setdefault(split, []).append(Path(path).stem)
        sparse = [r for r in records if r.get("layout") == "sparse"]
        if sparse:
            raise DataError(str(sparse[0]["label"]), "raw M3D-Seg layout; convert it first with `m3d prepare m3d-seg`")
        by_split[split] = records
    summary: dict = {"out_dir": str(out_dir), "splits": {}, "no_definition": [], "rewording": None}
    classes = sorted({r["class_name"] for records in by_split.values() for r in records})
    if enhance_llm is not None:
        chat = _chat(enhance_llm, batch_size, 40 * rewordings)
        dictionary, summary["rewording"] = _reworded_terms(dictionary, classes, chat, rewordings, batch_size)
    summary["no_definition"] = [c for c in classes if not dictionary.get(c)]
    for split, records in by_split.items():
        counts, shapes = Counter(), {}
        target = instruction_file(out_dir, split)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for record in tqdm(records, desc=f"seg-instructions {split}", unit="mask", mininterval=2.0):
                image = str(record["image"])
                if image not in shapes:
                    shapes[image] = _volume_shape(image)
                box = mask_box(load_class_mask(record["label"], shapes[image]))
                rng = random.Random(f"{seed}/{record['dataset']}/{split}/{record['row']}")
                made = instructions_for(record["class_name"], box, dictionary.get(record["class_name"], []), rng)
                counts["positive" if box is not None else "negative"] += 1
                for item in made:
                    counts[f"{item['task']}/{item['variant']}"] += 1
                    entry = {
                        **item,
                        "image": Path(os.path.relpath(image, out_dir)).as_posix(),
                        "mask": Path(os.path.relpath(record["label"], out_dir)).as_posix(),
                        "dataset": record["dataset"],
                        "class_name": record["class_name"],
                    }
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        tmp.replace(target)
        summary["splits"][split] = {"file": str(target), "masks": len(records), **dict(sorted(counts.items())),
                                    "datasets_without_split": without_split.get(split, [])}
    if summary["no_definition"]:
        logger.warning("no definition for %d class(es), label variants only: %s", len(summary["no_definition"]),
                       summary["no_definition"][:20])
    return summary
