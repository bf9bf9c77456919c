"""M3D-Bench: every task's answers generated once per model and logged per sample, so a killed run resumes where it
stopped; then scored with the field's libraries and summarised with bootstrap 95 % confidence intervals.

A *checkpoint* is one model × benchmark run: a model bundle (``lamed_instruct`` or ``lamed_seg`` for the generation
tasks, ``clip_pretrain`` for image–text retrieval) whose own configs define the architecture and the data files, the
trained weights to load, and optionally ``image_free`` (images replaced by zeros — the control every number is read
against). Per checkpoint the bench writes ``<output_dir>/<name>/predictions.jsonl`` (one line per generated
answer), ``summary.json`` and ``summary.md``, and logs one MLflow run (resumed, not duplicated, by a rerun) with
metrics named ``task/metric``. Generated answers are never recomputed; retrieval embeddings take seconds and are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from scipy import stats

from m3d_components.data.boxes import parse_boxes
from m3d_components.engines.instruct import has_box, prediction_row, score_sample
from m3d_components.engines.paths import find_bundle
from m3d_components.engines.settings import check_overrides
from m3d_components.engines.tracking import experiment_name, mlflow_key, tracking_uri, unique_run_name
from m3d_components.metrics.boxes import enclosing_overlap
from m3d_components.metrics.judge import judge_messages, parse_judge_score
from m3d_components.metrics.text import text_scores

__all__ = [
    "BENCH_TASKS",
    "BenchWriter",
    "PredictionLog",
    "bench_checkpoint",
    "bootstrap_summary",
    "checkpoint_tasks",
    "judge_scores",
    "compare_runs",
    "markdown_table",
    "run_bench",
    "task_scores",
]

logger = logging.getLogger(__name__)

# bench task → the instruction dataset it reads (SPEC §6 names on the left)
DATASET_TASK = {"rg": "caption", "cvqa": "vqa_closed", "ovqa": "vqa_open", "rec": "rec", "reg": "reg", "ss": "ss",
                "res": "res"}
BENCH_TASKS = ("itr", *DATASET_TASK)
TEXT_TASKS = ("rg", "ovqa", "reg")
MASK_TASKS = ("ss", "res")
HEADLINE = ("rg/bleu", "rg/meteor", "rg/bertscore_f1", "cvqa/acc", "ovqa/bleu", "rec/acc@0.2", "reg/bleu", "ss/dice",
            "ss/neg_acc", "res/dice", "res/neg_acc")
_ITR_HEADLINE = re.compile(r"itr/(ir|tr)_r1@\d+$")
CHECKPOINT_TAG = "m3d.checkpoint"  # the bench checkpoint a run measured (run names are unique: name-time-hex)


def headline_keys(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The headline metrics any summary has: R@1 both ways on every retrieval pool, then :data:`HEADLINE`."""
    present = {k for s in summaries.values() for k in s}
    itr = sorted((k for k in present if _ITR_HEADLINE.match(k)), key=lambda k: (int(k.rsplit("@", 1)[1]), k))
    return itr + [h for h in HEADLINE if h in present]


class PredictionLog:
    """Per-sample JSON lines, appended and flushed a batch at a time; a rerun reads which sample ids are done.

    Only the last line can be cut by a kill (every row is written with its line end): a last line without its line
    end is dropped (and truncated from the file) rather than breaking the rerun. Any other line that is not JSON is
    damage a rerun must not paper over, so it is an error rather than the end of the log.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """Every logged row, in order.

        Raises:
            ValueError: a complete line (one ending in a line end) that is not JSON, named by file and line number.
        """
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        *lines, cut = data.split(b"\n")  # cut: b"" when the file ends with a line end, else a line cut by a kill
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
                raise ValueError(
                    f"{self.path}, line {number}: not a JSON row ({err}); only a cut last line is dropped on a rerun, "
                    f"so repair or remove that line by hand, or delete {self.path.name} to start it again"
                ) from err
        if cut:
            logger.warning("%s: dropping a cut last line (the run was killed while writing)", self.path)
            with self.path.open("r+b") as handle:
                handle.truncate(len(data) - len(cut))
        return rows

    def done(self) -> set[str]:
        return {row["id"] for row in self.rows()}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class BenchWriter:
    """Evaluator handler: one logged row per sample — its id and :func:`~m3d_components.engines.instruct.prediction_row`
    (reference fields, answer, scores; masks are scored as they come and never stored).

    Args:
        log: where rows go.
        task: the bench task of this evaluator.
        ids: the sample ids in loader order (the loader must not shuffle).
    """

    def __init__(self, log: PredictionLog, task: str, ids: Sequence[str]) -> None:
        self.log, self.task, self.ids = log, task, list(ids)
        self._next = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        pred, target = engine.state.output["pred"], engine.state.output["label"]
        rows = []
        for i in range(len(pred["text"])):
            rows.append({**prediction_row(pred, target, i), "id": self.ids[self._next], "bench_task": self.task})
            self._next += 1
        self.log.append(rows)


def task_scores(
    task: str, rows: Sequence[dict[str, Any]], bertscore_model: str | os.PathLike | None = None,
    meteor: bool = True,
) -> dict[str, list[float]]:
    """Per-sample scores of one task's logged rows, named ``task/metric`` (lists may differ in length: a per-type
    score covers only that type's samples)."""
    out: dict[str, list[float]] = defaultdict(list)
    if not rows:
        return {}
    if task in TEXT_TASKS:
        scores = text_scores([r["prediction"] for r in rows], [r["answer"] for r in rows], bertscore_model, meteor)
        for name, values in scores.items():
            out[f"{task}/{name}"] = list(values)
            if task == "ovqa":
                for row, value in zip(rows, values):
                    out[f"ovqa/{name}_type{row['question_type']}"].append(value)
        return dict(out)
    for row in rows:
        if task in MASK_TASKS:
            sample = {k: v for k, v in row["scores"].items() if k.count("/") < 3}  # per-class scores stay per row
        else:
            sample = score_sample(DATASET_TASK[task], row["prediction"], row)
            if task == "rec" and has_box(row["box"]):
                boxes = parse_boxes(row["prediction"])
                sample["rec/enclosing_iou"] = enclosing_overlap(boxes[0], row["box"]) if boxes else 0.0
        for name, value in sample.items():
            out[name].append(float(value))
    return dict(out)


def bootstrap_summary(
    scores: dict[str, Sequence[float]], resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``{metric: {"value": mean, "ci95": [low, high], "n": samples}}``; percentile bootstrap (scipy) of the mean."""
    summary = {}
    for name, values in sorted(scores.items()):
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            continue
        low = high = float(x.mean())
        if x.size > 1 and np.ptp(x) > 0:
            ci = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile",
                                 rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(ci.low), float(ci.high)
        summary[name] = {"value": float(x.mean()), "ci95": [low, high], "n": int(x.size)}
    return summary


def _cell(entry: dict[str, Any] | None) -> str:
    return "" if entry is None else f"{entry['value']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"


def markdown_table(summaries: dict[str, dict[str, dict[str, Any]]], metrics: Sequence[str] | None = None) -> str:
    """Metrics as rows, checkpoints as columns: ``value [low, high]``."""
    names = list(summaries)
    keys = metrics or sorted({k for s in summaries.values() for k in s if k.count("/") < 2 and "_type" not in k})
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [_cell(summaries[name].get(key)) for name in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bundle_parser(bundle: str, configs: Sequence[str], overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(find_bundle(bundle)) / "configs" / c) for c in configs])
    parser.update({"init_weights": None, **overrides})
    return parser


def _datasets(parser, tasks: Sequence[str], split: str) -> dict[str, torch.utils.data.Dataset]:
    from m3d_components.data import instruct, transforms

    get = parser.get_parsed_content
    wanted = sorted({DATASET_TASK[t] for t in tasks})
    needs_seg = bool({"rec", "reg", "ss", "res"} & set(wanted))
    return instruct.instruction_datasets(
        wanted, split, cap_json=get("cap_json"), vqa_csv=get("vqa_csv")[split],
        seg_jsons=instruct.find_seg_jsons(get("seg_dir")) if needs_seg else [],
        term_dictionary=get("term_dictionary"), data_root=get("dataset_dir"), transform=transforms.eval_transforms(),
        seg_transform=transforms.eval_transforms(mask_keys=["seg"]), seed=0,
        image_shape=[1, *get("image_size")], max_report_words=get("max_report_words"),
        answer_variants=get("answer_variants"),
    )


# what makes a local model answer as it does: configs, tokenizer, chat template, weights (not READMEs or __pycache__)
_MODEL_SUFFIXES = {".json", ".jinja", ".model", ".txt", ".tiktoken", ".safetensors", ".bin", ".gguf", ".pt", ".pth"}
_WHOLE_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


def _model_fingerprint(path: str | os.PathLike) -> str:
    """A cheap SHA-256 identity of a local model folder or file: each model file's name and size, small files
    (configs, tokenizer, chat template) hashed whole with :func:`_sha256`, large ones (weights) by their first and
    last MiB — enough to tell models apart without reading gigabytes of weights on every run."""
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(
        f for f in root.rglob("*") if f.is_file() and f.suffix in _MODEL_SUFFIXES
        and not any(part.startswith(".") for part in f.relative_to(root).parts))
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        if size <= _WHOLE_HASH_BYTES:
            content = _sha256(file)
        else:
            with file.open("rb") as handle:
                head = handle.read(_EDGE_BYTES)
                handle.seek(-_EDGE_BYTES, os.SEEK_END)
                content = hashlib.sha256(head + handle.read()).hexdigest()
        name = "" if file == root else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{size}\0{content}\n".encode())
    return digest.hexdigest()


def _judge_text(judge: dict[str, str] | None) -> str:
    return "an unrecorded judge" if not judge else f"{judge.get('path')} (fingerprint {judge.get('fingerprint')})"


def judge_scores(rows: Sequence[dict[str, Any]], judge_model: str | os.PathLike, log: PredictionLog,
                 batch_size: int = 8, max_new_tokens: int = 384) -> dict[str, list[float]]:
    """The optional LLM judge of generated reports: a local chat LLM scores each report against its reference
    (``rg/llm_judge``, 0–1; replies without a score are left out and counted in ``rg/llm_judge_unparsed``).

    Replies are logged per sample in ``log`` with the judge that gave them (its path and
    :func:`_model_fingerprint`), and a rerun asks only for the missing ones. Scores of two judges are never mixed:
    a log holding another judge's replies is refused. The fingerprint decides, so a moved judge folder still counts
    as the same judge.

    Raises:
        ValueError: ``log`` holds replies of another judge (or of an unrecorded one, logged before judges were
            recorded).
    """
    from m3d_components.models.chat import ChatLM

    judge = {"path": str(Path(judge_model).resolve()), "fingerprint": _model_fingerprint(judge_model)}
    done = {r["id"]: r for r in log.rows()}
    others = [r.get("judge") for r in done.values()
              if (r.get("judge") or {}).get("fingerprint") != judge["fingerprint"]]
    if others:
        remedy = (f"pass the judge_model those were scored with, or delete {log.path}" if others[0] else
                  f"they were logged before the judge was recorded, so delete {log.path}")
        raise ValueError(f"{log.path} holds scores of {_judge_text(others[0])}, not of judge_model "
                         f"{_judge_text(judge)}: {remedy} to score every report with this one")
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        model = ChatLM.from_local(judge_model, max_new_tokens=max_new_tokens, batch_size=batch_size)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            replies = model.complete([judge_messages(r["answer"], r["prediction"]) for r in chunk])
            entries = [{"id": r["id"], "reply": reply, "score": parse_judge_score(reply), "judge": judge}
                       for r, reply in zip(chunk, replies)]
            log.append(entries)
            done.update({e["id"]: e for e in entries})
    scores = [done[r["id"]]["score"] for r in rows]
    return {"rg/llm_judge": [v for v in scores if v is not None],
            "rg/llm_judge_unparsed": [float(v is None) for v in scores]}


def _itr_scores(checkpoint: dict[str, Any], split: str) -> dict[str, list[float]]:
    """Per-query IR/TR hits of a CLIP checkpoint on ``split`` (pools of 100/500/1000/2000, or the whole split)."""
    from monai.engines import SupervisedEvaluator
    from monai.inferers import SimpleInferer

    from m3d_components.engines.checkpoint import load_weights
    from m3d_components.metrics.retrieval import retrieval_hits

    parser = _bundle_parser("clip_pretrain", checkpoint.get("configs", ["train.json"]), checkpoint.get("overrides", {}))
    parser["validate#records"] = f"$md.cap.read_cap_split(@cap_json, {split!r}, @dataset_dir)"
    network = load_weights(parser.get_parsed_content("network"), checkpoint["weights"])
    images, texts = [], []

    def collect(engine: Engine) -> None:
        images.append(engine.state.output["pred"]["image_embeds"].float().cpu())
        texts.append(engine.state.output["pred"]["text_embeds"].float().cpu())

    evaluator = SupervisedEvaluator(
        device=parser.get_parsed_content("device"), val_data_loader=parser.get_parsed_content("validate#dataloader"),
        network=network, prepare_batch=parser.get_parsed_content("prepare_batch"), inferer=SimpleInferer(),
        amp=bool(parser.get_parsed_content("amp")), amp_kwargs={"dtype": torch.bfloat16}, decollate=False,
    )
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    evaluator.run()
    hits = retrieval_hits(torch.cat(images), torch.cat(texts))
    return {name: h.float().tolist() for name, h in hits.items()}


def _sample_ids(task: str, dataset: torch.utils.data.Dataset, limit: int | None, seed: int) -> list[tuple[str, int]]:
    """(id, index) of the task's evaluated samples: all, or a seeded random ``limit`` of them in index order."""
    indices = np.arange(len(dataset))
    if limit is not None and limit < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))
    return [(f"{task}:{int(i)}", int(i)) for i in indices]


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_manifest(out: Path, settings: dict[str, Any]) -> None:
    """Logged answers are reused only for the same weights, data and generation settings (``manifest.json``).

    Raises:
        ValueError: naming the settings that differ from those the logged answers were generated with.
    """
    settings = json.loads(json.dumps(settings, default=str))
    manifest = out / "manifest.json"
    if manifest.is_file() and (out / "predictions.jsonl").is_file():
        before = json.loads(manifest.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"{out} holds answers generated with other settings ({', '.join(changed)} differ): give this run "
                "another checkpoint name or output_dir, or delete that folder to regenerate"
            )
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings, indent=2))


def _generated_scores(
    checkpoint: dict[str, Any], tasks: Sequence[str], out: Path, *, split: str, samples_per_task: int | None,
    batch_size: int, max_new_tokens: int, bertscore_model: str | os.PathLike | None, meteor: bool, seed: int,
    judge_model: str | os.PathLike | None = None, static_cache: bool = False,
) -> dict[str, list[float]]:
    """Generate the answers not yet in ``out/predictions.jsonl``, then score every logged answer."""
    from monai.engines import SupervisedEvaluator
    from monai.utils import set_determinism

    from m3d_components.engines import collate as collate_lib
    from m3d_components.engines import instruct as instruct_lib
    from m3d_components.models.trainable import load_trained_state

    log = PredictionLog(out / "predictions.jsonl")
    _check_manifest(out, {
        "split": split, "samples_per_task": samples_per_task, "seed": seed, "max_new_tokens": max_new_tokens,
        "image_free": bool(checkpoint.get("image_free")), "bundle": checkpoint["bundle"],
        "configs": list(checkpoint.get("configs", ["train.json"])), "overrides": checkpoint.get("overrides", {}),
        "weights_sha256": _sha256(checkpoint["weights"]),
    })
    done = log.done()
    parser = _bundle_parser(checkpoint["bundle"], checkpoint.get("configs", ["train.json"]),
                            checkpoint.get("overrides", {}))
    datasets = _datasets(parser, tasks, split)
    chosen = {t: _sample_ids(t, datasets[DATASET_TASK[t]], samples_per_task, seed) for t in tasks}
    plan = {t: [(i, k) for i, k in chosen[t] if i not in done] for t in tasks}
    if any(plan.values()):
        set_determinism(seed=seed)
        network = parser.get_parsed_content("network")
        load_trained_state(network, checkpoint["weights"])
        network.eval()
        tokenizer, device = parser.get_parsed_content("tokenizer"), parser.get_parsed_content("device")
        masks = hasattr(network, "segment")
        for task in tasks:
            if not plan[task]:
                continue
            if task in MASK_TASKS and not masks:
                raise ValueError(f"task {task!r} needs a segmenting model (lamed_seg); {checkpoint['bundle']} has none")
            logger.info("%s: %s, %d samples to generate (%d done before)", checkpoint["name"], task,
                        len(plan[task]), len(done))
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(datasets[DATASET_TASK[task]], [k for _, k in plan[task]]),
                batch_size=batch_size, shuffle=False, num_workers=0,
                collate_fn=collate_lib.InstructionCollator(
                    tokenizer, network.num_image_tokens, parser["max_length"], keep=instruct_lib.SEG_KEEP_KEYS,
                    zero_images=bool(checkpoint.get("image_free")), masks=masks),
            )
            evaluator = SupervisedEvaluator(
                device=device, val_data_loader=loader, network=network,
                prepare_batch=instruct_lib.PrepareInstructionBatch(
                    ("prompt_ids", "prompt_mask"), target_keys=instruct_lib.SEG_TARGET_KEYS),
                inferer=instruct_lib.GenerationInferer(tokenizer, max_new_tokens, masks=masks,
                                                       static_cache=static_cache),
                val_handlers=[BenchWriter(log, task, [i for i, _ in plan[task]])],
                amp=bool(parser.get_parsed_content("amp")), amp_kwargs={"dtype": torch.bfloat16}, decollate=False,
            )
            ProgressBar(desc=f"{checkpoint['name']} {task}", persist=True).attach(evaluator)
            evaluator.run()
    wanted = {i for t in tasks for i, _ in chosen[t]}
    rows = defaultdict(list)
    for row in log.rows():
        if row["id"] in wanted:  # the current selection only, whatever else an earlier run logged
            rows[row["bench_task"]].append(row)
    scores: dict[str, list[float]] = {}
    for task in tasks:
        scores.update(task_scores(task, rows[task], bertscore_model, meteor))
    if judge_model is not None and rows["rg"]:
        scores.update(judge_scores(rows["rg"], judge_model, PredictionLog(out / "judge.jsonl"), batch_size))
    return scores


def checkpoint_tasks(checkpoint: dict[str, Any], tasks: Sequence[str]) -> list[str]:
    """The tasks of ``tasks`` that ``checkpoint`` answers, after checking its entry — so that
    :func:`run_bench` finds a bad third checkpoint before the first has generated anything.

    Raises:
        ValueError: an unknown task, a key missing from the entry, ``image_free`` on a CLIP checkpoint, or no task
            left for it.
        SettingsError: an override that names no key of its bundle's configs.
        FileNotFoundError: its weights do not exist.
    """
    unknown = sorted(set(tasks) - set(BENCH_TASKS))
    if unknown:
        raise ValueError(f"unknown bench task(s) {unknown}; available: {BENCH_TASKS}")
    for key in ("name", "bundle", "weights"):
        if not checkpoint.get(key):
            raise ValueError(f"checkpoint {checkpoint} lacks {key!r}")
    name, bundle = checkpoint["name"], checkpoint["bundle"]
    configs = [str(Path(find_bundle(bundle)) / "configs" / c) for c in checkpoint.get("configs", ["train.json"])]
    check_overrides(configs, checkpoint.get("overrides", {}), f"checkpoint {name!r} ({bundle})")
    if not Path(checkpoint["weights"]).is_file():
        raise FileNotFoundError(f"checkpoint {name!r}: weights {checkpoint['weights']} do not exist")
    asked = [t for t in tasks if checkpoint.get("tasks") is None or t in checkpoint["tasks"]]
    if bundle == "clip_pretrain":
        if checkpoint.get("image_free"):
            raise ValueError(f"checkpoint {name!r}: image_free applies to LaMed checkpoints only")
        answered = [t for t in asked if t == "itr"]
    else:
        answered = [t for t in asked if t != "itr" and (bundle == "lamed_seg" or t not in MASK_TASKS)]
    if not answered:
        raise ValueError(f"checkpoint {name!r} ({bundle}) answers none of the tasks asked of it ({list(asked)}): "
                         "remove it from checkpoints or ask for its tasks")
    return answered


def _require_models(bertscore_model: str | os.PathLike | None, judge_model: str | os.PathLike | None) -> None:
    """The scoring models exist locally (a BERTScore encoder folder; a judge folder or GGUF file)."""
    if bertscore_model is not None and not (Path(bertscore_model) / "config.json").is_file():
        raise FileNotFoundError(f"bertscore_model {bertscore_model} is not a local model folder (no config.json)")
    if judge_model is not None and not Path(judge_model).exists():
        raise FileNotFoundError(f"judge_model {judge_model} does not exist")


def bench_checkpoint(
    checkpoint: dict[str, Any], tasks: Sequence[str], output_dir: str | os.PathLike, *, split: str = "test",
    samples_per_task: int | None = None, batch_size: int = 8, max_new_tokens: int = 256,
    bertscore_model: str | os.PathLike | None = None, meteor: bool = True, resamples: int = 1000, seed: int = 42,
    judge_model: str | os.PathLike | None = None, static_cache: bool = False,
) -> dict[str, dict[str, Any]]:
    """Generate (resuming), score and summarise one checkpoint; returns its summary (see :func:`bootstrap_summary`).
    A checkpoint runs the tasks of ``tasks`` its bundle can answer (``itr`` for clip_pretrain, the others for LaMed),
    or those of them its own ``"tasks"`` lists.

    Args:
        checkpoint: ``{"name", "bundle", "weights", "configs" (default ["train.json"]), "overrides" ({}),
            "image_free" (False), "tasks" (all)}``.
        judge_model: a local chat LLM that also scores the generated reports (see :func:`judge_scores`).
        static_cache: decode with a fixed-shape KV cache (CUDA graphs on a GPU; see
            :class:`~m3d_components.engines.instruct.GenerationInferer`); the answers are the same.
    """
    tasks = checkpoint_tasks(checkpoint, tasks)
    out = Path(output_dir) / checkpoint["name"]
    if checkpoint["bundle"] == "clip_pretrain":
        scores = _itr_scores(checkpoint, split)
    else:
        scores = _generated_scores(checkpoint, tasks, out, split=split, samples_per_task=samples_per_task,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   bertscore_model=bertscore_model, meteor=meteor, seed=seed,
                                   judge_model=judge_model, static_cache=static_cache)
    summary = bootstrap_summary(scores, resamples, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"checkpoint": checkpoint, "metrics": summary}, indent=2))
    (out / "summary.md").write_text(markdown_table({checkpoint["name"]: summary}))
    _track(checkpoint, summary, out, tasks)
    return summary


def _track(checkpoint: dict[str, Any], summary: dict[str, dict[str, Any]], out: Path, tasks: Sequence[str]) -> None:
    """One MLflow run per checkpoint × benchmark; a rerun continues the run it started (its id is kept in ``out``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(out.parent))
    experiment = mlflow.set_experiment(experiment_name("m3d_bench"))
    id_file = out / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id is not None:
        try:
            found = mlflow.MlflowClient().get_run(run_id)
            if found.info.experiment_id != experiment.experiment_id:
                raise ValueError("the saved run belongs to another experiment")
        except Exception as err:  # store moved or deleted, or another experiment: start a new run
            logger.warning("%s: not continuing MLflow run %s (%s); starting a new one", checkpoint["name"], run_id, err)
            run_id = None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment.experiment_id,
                          run_name=None if run_id else unique_run_name(checkpoint["name"]),
                          tags=None if run_id else {CHECKPOINT_TAG: checkpoint["name"]}) as run:
        id_file.write_text(run.info.run_id)
        if run_id is None:
            mlflow.log_params({"bundle": checkpoint["bundle"], "weights": str(checkpoint["weights"]),
                               "image_free": bool(checkpoint.get("image_free")), "tasks": ",".join(tasks)})
        metrics = {}
        for key, entry in summary.items():
            metrics[mlflow_key(key)] = entry["value"]
            metrics[mlflow_key(key) + "/ci95_low"], metrics[mlflow_key(key) + "/ci95_high"] = entry["ci95"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(out / "summary.md"))


def run_bench(checkpoints: Sequence[dict[str, Any]], tasks: Sequence[str], output_dir: str | os.PathLike,
              **kwargs: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Every checkpoint in turn (see :func:`bench_checkpoint`), then ``comparison.md`` of all of them."""
    names = [c.get("name") for c in checkpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoint names must be unique, got {names}")
    for checkpoint in checkpoints:  # every entry and model checked before any work
        checkpoint_tasks(checkpoint, tasks)
    _require_models(kwargs.get("bertscore_model"), kwargs.get("judge_model"))
    summaries = {c["name"]: bench_checkpoint(c, tasks, output_dir, **kwargs) for c in checkpoints}
    table = markdown_table(summaries, headline_keys(summaries))
    Path(output_dir, "comparison.md").write_text(table)
    logger.info("M3D-Bench\n%s", table)
    return summaries


def compare_runs(
    store: str, out: str | os.PathLike, experiment: str | None = None, metrics: Sequence[str] | None = None
) -> str:
    """Side-by-side table of the bench's MLflow runs (one column per run, ``value [95 % CI]``), written as
    ``<out>.md``, and a grouped bar chart of the same metrics with their intervals as ``<out>.png``.

    A column is named by its run's checkpoint (the ``m3d.checkpoint`` tag; the run name for runs without it); runs of
    one checkpoint name (benched again after its ``eval/<name>/`` was deleted, or the same name in two output folders
    logging to one store) each keep a column, told apart by the first 8 characters of their run ids.

    Args:
        store: the MLflow tracking URI (e.g. ``sqlite:///bundles/m3d_bench/eval/mlruns.db``).
        experiment: the MLflow experiment; None: the one the bench logs to (``MLFLOW_EXPERIMENT_NAME`` if set, else
            ``m3d_bench``).
        metrics: the metric names to show (default: the headline metrics any run has).

    Raises:
        ValueError: when the store has no such experiment or it has no finished run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    experiment = experiment_name("m3d_bench") if experiment is None else experiment
    client = mlflow.MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"]) if found else []
    runs = [r for r in runs if r.info.status == "FINISHED"]
    if not runs:
        raise ValueError(f"no finished run of experiment {experiment!r} in {store}")
    names = [run.data.tags.get(CHECKPOINT_TAG) or run.info.run_name or run.info.run_id for run in runs]
    repeated = {name for name in names if names.count(name) > 1}
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for run, name in zip(runs, names):
        values = run.data.metrics
        summary = {}
        for key, value in values.items():
            if key.endswith(("/ci95_low", "/ci95_high")):
                continue
            summary[key.replace("_at_", "@")] = {
                "value": value, "ci95": [values.get(key + "/ci95_low", value), values.get(key + "/ci95_high", value)]}
        summaries[f"{name} ({run.info.run_id[:8]})" if name in repeated else name] = summary
    shown = list(metrics or headline_keys(summaries))
    table = markdown_table(summaries, shown)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(shown)), 4.0))
    width = 0.8 / len(summaries)
    for j, (name, summary) in enumerate(summaries.items()):
        xs = np.arange(len(shown)) + j * width
        value = np.array([summary.get(m, {"value": np.nan})["value"] for m in shown])
        ci = np.array([summary.get(m, {"ci95": [np.nan, np.nan]})["ci95"] for m in shown]).T
        ax.bar(xs, value, width, label=name, yerr=np.abs(ci - value), capsize=2)
    ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, shown, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return table
