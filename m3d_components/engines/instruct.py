"""Ignite glue for LaMed: batch preparation, a generating inferer, task scores and per-sample prediction files.

One collated batch (:class:`~m3d_components.engines.collate.InstructionCollator`) carries both the training tensors
and the left-padded prompts, so an evaluator computes the validation loss and generates answers from the same batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average, Metric

from m3d_components.data.boxes import parse_boxes
from m3d_components.engines.batch import PrepareImageTextBatch
from m3d_components.metrics.boxes import box_iou
from m3d_components.metrics.choice import lenient_correct, strict_correct
from m3d_components.metrics.text import bleu1

__all__ = [
    "GenerationInferer",
    "InstructionScores",
    "MixtureEpochHandler",
    "PredictionWriter",
    "PrepareInstructionBatch",
    "TRAIN_KEYS",
    "EVAL_KEYS",
    "instruction_metrics",
    "pred_loss",
]

TRAIN_KEYS = ("input_ids", "attention_mask", "labels")
EVAL_KEYS = (*TRAIN_KEYS, "prompt_ids", "prompt_mask")
TARGET_KEYS = ("task", "answer", "question", "question_type", "answer_letter", "choices", "box", "image_path")


class PrepareInstructionBatch(PrepareImageTextBatch):
    """Image as input, token tensors as keyword arguments, the samples' text fields as the (dict) target."""

    def __init__(self, keys: Sequence[str] = TRAIN_KEYS, image_key: str = "image") -> None:
        super().__init__(keys, image_key)

    def __call__(self, batchdata: dict[str, Any], device=None, non_blocking: bool = False, **kwargs):
        image, _, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        return image, {k: batchdata[k] for k in TARGET_KEYS if k in batchdata}, args, extra


class GenerationInferer:
    """Evaluator inferer: the token loss of the batch (when labels are given) and greedy answers to its prompts.

    Args:
        tokenizer: decodes the new tokens (special tokens dropped, ``[SEG]`` kept).
        max_new_tokens: the generation budget; a batch stops as soon as every sample has ended.
    """

    def __init__(self, tokenizer, max_new_tokens: int = 256) -> None:
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, **batch: torch.Tensor) -> dict[str, Any]:
        model = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
        out: dict[str, Any] = {}
        if "labels" in batch:
            out["loss"] = model(inputs, batch["input_ids"], batch["attention_mask"], batch["labels"])["loss"].detach()
        tokens = model.generate(
            inputs, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=self.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        out["text"] = [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return out


def texts_and_targets(output: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(generated texts, the batch's target fields) of an evaluator output."""
    return output["pred"]["text"], output["label"]


def pred_loss(output: dict[str, Any]) -> torch.Tensor:
    """The evaluator's batch loss, for an ``ignite.metrics.Average``."""
    return output["pred"]["loss"]


def _has_box(box: Any) -> bool:
    return box is not None and not any(math.isnan(float(b)) for b in box)


def score_sample(task: str, prediction: str, target: dict[str, Any]) -> dict[str, float]:
    """Per-sample scores named ``<task>/<metric>`` (SPEC §6 names: ``cvqa``, ``ovqa``, ``rg``, ``rec``, ``reg``)."""
    if task == "vqa_closed":
        letter = target["answer_letter"]
        correct = float(strict_correct(prediction, letter, target.get("choices")))
        return {
            "cvqa/acc": correct,
            f"cvqa/acc_type{target['question_type']}": correct,
            "cvqa/acc_lenient": float(lenient_correct(prediction, letter)),
        }
    if task == "vqa_open":
        return {"ovqa/bleu": bleu1([prediction], [target["answer"]])[0]}
    if task == "caption":
        return {"rg/bleu": bleu1([prediction], [target["answer"]])[0]}
    if task == "reg":
        return {"reg/bleu": bleu1([prediction], [target["answer"]])[0]}
    if task == "rec":
        boxes = parse_boxes(prediction)
        if not _has_box(target["box"]):
            return {"rec/neg_acc": float(not boxes)}
        iou = box_iou(boxes[0], [float(b) for b in target["box"]]) if boxes else 0.0
        return {"rec/iou": iou, "rec/acc@0.2": float(iou > 0.2), "rec/acc@0.5": float(iou > 0.5)}
    return {}


SCORE_NAMES = (
    "cvqa/acc", *(f"cvqa/acc_type{t}" for t in range(1, 6)), "cvqa/acc_lenient", "ovqa/bleu", "rg/bleu", "reg/bleu",
    "rec/iou", "rec/acc@0.2", "rec/acc@0.5", "rec/neg_acc",
)
HEADLINE = ("cvqa/acc", "rec/acc@0.2", "rg/bleu", "ovqa/bleu", "reg/bleu")


class InstructionScores(Metric):
    """Mean per-sample task scores over an evaluation (all DDP ranks summed), named ``<prefix><task>/<metric>``.

    Args:
        prefix: e.g. ``"val/"`` during training, ``""`` for a test evaluation, ``"control/"`` for the image-free run.
        summary: return one number — the mean of the headline scores present (closed-VQA accuracy, REC
            accuracy@0.2, the BLEU scores) — for use as the key metric; else the dict of every score.
        baseline_box: a fixed normalised box scored as if predicted for every REC positive (``rec/baseline_acc@0.2``,
            the "average box" reference point).
    """

    def __init__(
        self, prefix: str = "val/", summary: bool = False, baseline_box: Sequence[float] | None = None,
        output_transform=None, device: str | torch.device = "cpu",
    ) -> None:
        self.prefix, self.summary = prefix, summary
        self.baseline_box = None if baseline_box is None else [float(b) for b in baseline_box]
        self.names = SCORE_NAMES + (("rec/baseline_iou", "rec/baseline_acc@0.2") if baseline_box is not None else ())
        super().__init__(output_transform=output_transform or texts_and_targets, device=device)

    def reset(self) -> None:
        self._sums = torch.zeros(len(self.names), dtype=torch.float64)
        self._counts = torch.zeros(len(self.names), dtype=torch.float64)

    def _add(self, scores: dict[str, float]) -> None:
        for name, value in scores.items():
            i = self.names.index(name)
            self._sums[i] += value
            self._counts[i] += 1

    def update(self, output: tuple[list[str], dict[str, Any]]) -> None:
        texts, target = output
        for i, text in enumerate(texts):
            sample = {k: (v[i] if isinstance(v, (list, tuple, torch.Tensor)) else v) for k, v in target.items()}
            self._add(score_sample(sample["task"], text, sample))
            if self.baseline_box is not None and sample["task"] == "rec" and _has_box(sample["box"]):
                iou = box_iou(self.baseline_box, [float(b) for b in sample["box"]])
                self._add({"rec/baseline_iou": iou, "rec/baseline_acc@0.2": float(iou > 0.2)})

    def compute(self) -> dict[str, float] | float:
        sums = idist.all_reduce(self._sums.clone())
        counts = idist.all_reduce(self._counts.clone())
        scores = {self.prefix + n: float(s / c) for n, s, c in zip(self.names, sums, counts) if c > 0}
        if not scores:
            raise RuntimeError("InstructionScores saw no sample: the evaluator ran no iteration")
        if not self.summary:
            return scores
        headline = [scores[self.prefix + n] for n in HEADLINE if self.prefix + n in scores]
        return float(np.mean(headline)) if headline else 0.0


def instruction_metrics(
    prefix: str = "val/", baseline_box: Sequence[float] | None = None
) -> tuple[dict[str, Metric], dict[str, Metric]]:
    """(key metric ``<prefix>score``, additional: every task score and ``<prefix>loss``) for an evaluator."""
    return {f"{prefix}score": InstructionScores(prefix, summary=True)}, {
        f"{prefix}tasks": InstructionScores(prefix, baseline_box=baseline_box),
        f"{prefix}loss": Average(output_transform=pred_loss),
    }


class PredictionWriter:
    """Append one JSON line per evaluated sample (task, question, reference, prediction, …) to ``path``.

    Under DDP each rank writes ``<stem>.rank<r>.jsonl`` next to ``path``. The file is truncated when the engine
    starts, so a rerun does not mix two evaluations.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)

    def _file(self) -> Path:
        if idist.get_world_size() > 1:
            return self.path.with_name(f"{self.path.stem}.rank{idist.get_rank()}.jsonl")
        return self.path

    def _start(self, engine: Engine) -> None:
        self._file().parent.mkdir(parents=True, exist_ok=True)
        self._file().write_text("")

    def _write(self, engine: Engine) -> None:
        texts, target = engine.state.output["pred"]["text"], engine.state.output["label"]
        with self._file().open("a", encoding="utf-8") as handle:
            for i, text in enumerate(texts):
                row = {k: _plain(v[i]) for k, v in target.items()}
                row["prediction"] = text
                row["scores"] = score_sample(row["task"], text, row)
                handle.write(json.dumps(row) + "\n")


def _plain(value: Any) -> Any:
    """JSON-friendly value (tensors → lists, NaN boxes → None)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], float) and any(math.isnan(v) for v in value):
        return None
    return value


class MixtureEpochHandler:
    """Redraw a :class:`~m3d_components.data.mixture.TaskMixture` at the start of every epoch (seeded by epoch)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch)
