"""Ignite glue for LaMed: batch preparation, a generating inferer, task scores and per-sample prediction files.

One collated batch (:class:`~m3d_components.engines.collate.InstructionCollator`) carries both the training tensors
and the left-padded prompts, so an evaluator computes the validation loss and generates answers from the same batch.
"""

from __future__ import annotations

import json
import math
import os
import re
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
from m3d_components.metrics.masks import hard_dice, soft_dice
from m3d_components.metrics.text import bleu1

__all__ = [
    "GenerationInferer",
    "InstructionScores",
    "MixtureEpochHandler",
    "PredictionWriter",
    "PrepareInstructionBatch",
    "TRAIN_KEYS",
    "PACKED_TRAIN_KEYS",
    "EVAL_KEYS",
    "SEG_TRAIN_KEYS",
    "PACKED_SEG_TRAIN_KEYS",
    "SEG_EVAL_KEYS",
    "SEG_KEEP_KEYS",
    "SEG_TARGET_KEYS",
    "batch_row",
    "has_box",
    "json_value",
    "prediction_row",
    "sample_scores",
    "score_mask_sample",
    "score_sample",
    "instruction_metrics",
    "pred_loss",
]

TRAIN_KEYS = ("input_ids", "attention_mask", "labels")
PACKED_TRAIN_KEYS = ("input_ids", "position_ids", "labels")  # InstructionCollator(pack=True)
EVAL_KEYS = (*TRAIN_KEYS, "prompt_ids", "prompt_mask")
SEG_TRAIN_KEYS = (*TRAIN_KEYS, "seg")
PACKED_SEG_TRAIN_KEYS = (*PACKED_TRAIN_KEYS, "seg")
SEG_EVAL_KEYS = (*EVAL_KEYS, "seg")
TARGET_KEYS = ("task", "answer", "question", "question_type", "answer_letter", "choices", "box", "image_path")
# Segmentation evaluation: the collator keeps SEG_KEEP_KEYS as lists (it stacks the masks itself, as ``seg``); the
# target adds the masks, which are scored but never written to the prediction file.
SEG_KEEP_KEYS = (*TARGET_KEYS, "dataset", "class_name")
MASK_KEYS = ("seg",)
SEG_TARGET_KEYS = (*SEG_KEEP_KEYS, *MASK_KEYS)


class PrepareInstructionBatch(PrepareImageTextBatch):
    """Image as input, token tensors as keyword arguments, the samples' reference fields as the (dict) target.

    Args:
        keys: batch keys moved to the device and passed to the network.
        target_keys: batch fields kept as the target (on the CPU) for scores and prediction files.
    """

    def __init__(
        self, keys: Sequence[str] = TRAIN_KEYS, image_key: str = "image", target_keys: Sequence[str] = TARGET_KEYS
    ) -> None:
        super().__init__(keys, image_key)
        self.target_keys = tuple(target_keys)

    def __call__(self, batchdata: dict[str, Any], device=None, non_blocking: bool = False, **kwargs):
        image, _, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        return image, {k: batchdata[k] for k in self.target_keys if k in batchdata}, args, extra


class GenerationInferer:
    """Evaluator inferer: the token loss of the batch (when labels are given) and greedy answers to its prompts.

    Args:
        tokenizer: decodes the new tokens (special tokens dropped, ``[SEG]`` kept).
        max_new_tokens: the generation budget; a batch stops as soon as every sample has ended.
        masks: the network is a :class:`~m3d_components.models.lamed_seg.LaMedSeg`: also return ``mask_probs``
            (B, 1, D, H, W) and ``has_mask`` (B,) for the answers that hold ``[SEG]``, and include the mask losses
            in the loss when the batch carries target masks (``seg``).
        synced: keep decoding until every rank's batch has ended (Hugging Face's ``synced_gpus``), as FSDP needs:
            each decoding step gathers the sharded weights on all ranks at once.
        static_cache: decode with a preallocated KV cache of fixed shape (``cache_implementation="static"``); on a
            GPU transformers then compiles the decoding step and replays it as a CUDA graph, which removes the
            per-step launch cost that bounds batched decoding. The tokens are the same (tested).
    """

    def __init__(self, tokenizer, max_new_tokens: int = 256, masks: bool = False, synced: bool = False,
                 static_cache: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.masks = masks
        self.options = {**({"synced_gpus": True} if synced else {}),
                        **({"cache_implementation": "static"} if static_cache else {})}

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, **batch: torch.Tensor) -> dict[str, Any]:
        model = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
        out: dict[str, Any] = {}
        if "labels" in batch:
            extra = {"seg": batch["seg"]} if self.masks and "seg" in batch else {}
            loss = model(inputs, batch["input_ids"], batch["attention_mask"], batch["labels"], **extra)["loss"]
            out["loss"] = loss.detach()
        eos = self.tokenizer.eos_token_id
        tokens = model.generate(
            inputs, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=self.max_new_tokens, eos_token_id=eos,
            **self.options,
        )
        out["text"] = [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        if self.masks:
            out["mask_probs"], out["has_mask"] = model.segment(
                inputs, batch["prompt_ids"], batch["prompt_mask"], tokens, eos
            )
        return out


def preds_and_targets(output: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the inferer's output: texts and, for LaMedSeg, masks; the batch's target fields) of an evaluator output."""
    return output["pred"], output["label"]


def pred_loss(output: dict[str, Any]) -> torch.Tensor:
    """The evaluator's batch loss, for an ``ignite.metrics.Average``."""
    return output["pred"]["loss"]


def has_box(box: Any) -> bool:
    """A box with six numbers (negatives carry NaN or None)."""
    return box is not None and not any(math.isnan(float(b)) for b in box)


def _slug(name: str) -> str:
    """A class or dataset name as one metric-name segment: lower case, anything but ``a-z 0-9 _ . -`` → ``_``
    (MLflow refuses other characters, and ``/`` would split the name)."""
    return re.sub(r"[^a-z0-9_.-]+", "_", str(name).lower()).strip("_") or "unnamed"


def score_mask_sample(
    task: str, probs: torch.Tensor | None, target: dict[str, Any], baseline: torch.Tensor | None = None
) -> dict[str, float]:
    """Scores of one segmentation answer (``probs``: mask probabilities, None when the answer had no ``[SEG]``).

    A present target scores the Dice of the thresholded mask (0 without a mask), overall and per dataset and class
    (``ss/dice/<dataset>/<class>``), plus the published soft Dice for parity; an absent one (a negative) is correct
    only when no voxel is predicted (``neg_acc``) — a hallucinated mask is wrong. ``dice_all`` puts both on one
    scale (negatives 1 or 0). ``baseline``: the class's training-set average mask, scored as ``baseline_dice``.
    """
    gt = torch.as_tensor(target["seg"]).bool()
    pred = probs > 0.5 if probs is not None else torch.zeros_like(gt)
    if not bool(gt.any()):
        correct = float(not bool(pred.any()))
        return {f"{task}/neg_acc": correct, f"{task}/dice_all": correct}
    dice = float(hard_dice(pred, gt)[0])
    scores = {
        f"{task}/dice": dice, f"{task}/dice_all": dice, f"{task}/mask_rate": float(probs is not None),
        f"{task}/soft_dice": float(soft_dice(probs, gt)[0]) if probs is not None else 0.0,
    }
    dataset, name = target.get("dataset"), target.get("class_name")
    if dataset:
        scores[f"{task}/dice/{_slug(dataset)}"] = dice
        if name:
            scores[f"{task}/dice/{_slug(dataset)}/{_slug(name)}"] = dice
    if baseline is not None:
        scores[f"{task}/baseline_dice"] = float(hard_dice(torch.as_tensor(baseline), gt)[0])
    return scores


def score_sample(task: str, prediction: str, target: dict[str, Any]) -> dict[str, float]:
    """Per-sample text-task scores named ``<task>/<metric>`` (SPEC §6 names: ``cvqa``, ``ovqa``, ``rg``, ``rec``,
    ``reg``)."""
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
        if not has_box(target["box"]):
            return {"rec/neg_acc": float(not boxes)}
        iou = box_iou(boxes[0], [float(b) for b in target["box"]]) if boxes else 0.0
        return {"rec/iou": iou, "rec/acc@0.2": float(iou > 0.2), "rec/acc@0.5": float(iou > 0.5)}
    return {}


def sample_scores(pred: dict[str, Any], target: dict[str, Any], i: int,
                  baseline_masks: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Every score of batch row ``i`` (its target fields already picked out in ``target``)."""
    task = target["task"]
    if task not in MASK_SCORE_TASKS:
        return score_sample(task, pred["text"][i], target)
    if "mask_probs" not in pred:
        raise ValueError(f"task {task!r} needs masks: evaluate a LaMedSeg with GenerationInferer(masks=True)")
    probs = pred["mask_probs"][i].cpu() if bool(pred["has_mask"][i]) else None
    key = f"{target.get('dataset')}/{target.get('class_name')}"
    return score_mask_sample(task, probs, target, (baseline_masks or {}).get(key))


MASK_SCORE_TASKS = ("ss", "res", "refseg")
# Segmentation enters the key metric with its negatives (dice_all), so a model that masks everything is not preferred.
HEADLINE = ("cvqa/acc", "rec/acc@0.2", "rg/bleu", "ovqa/bleu", "reg/bleu", "ss/dice_all", "res/dice_all", "refseg/dice")


def batch_row(target: dict[str, Any], i: int) -> dict[str, Any]:
    """Sample ``i`` of a collated target dict (lists and tensors indexed, scalars as they are)."""
    return {k: (v[i] if isinstance(v, (list, tuple, torch.Tensor)) else v) for k, v in target.items()}


class InstructionScores(Metric):
    """Mean per-sample task scores over an evaluation (all DDP ranks summed), named ``<prefix><task>/<metric>``.

    Args:
        prefix: e.g. ``"val/"`` during training, ``""`` for a test evaluation, ``"control/"`` for the image-free run.
        summary: return one number — the mean of the headline scores present (closed-VQA accuracy, REC
            accuracy@0.2, the BLEU scores, the Dice scores with negatives) — for use as the key metric; else the dict
            of every score.
        baseline_box: a fixed normalised box scored as if predicted for every REC positive (``rec/baseline_acc@0.2``,
            the "average box" reference point).
        baseline_masks: ``"<dataset>/<class>"`` → the training-set average mask, scored as if predicted for every
            positive segmentation sample of that class (``ss/baseline_dice``).
    """

    def __init__(
        self, prefix: str = "val/", summary: bool = False, baseline_box: Sequence[float] | None = None,
        baseline_masks: dict[str, torch.Tensor] | None = None, output_transform=None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.prefix, self.summary = prefix, summary
        self.baseline_box = None if baseline_box is None else [float(b) for b in baseline_box]
        self.baseline_masks = baseline_masks
        super().__init__(output_transform=output_transform or preds_and_targets, device=device)

    def reset(self) -> None:
        self._totals: dict[str, list[float]] = {}

    def _add(self, scores: dict[str, float]) -> None:
        for name, value in scores.items():
            total = self._totals.setdefault(name, [0.0, 0])
            total[0] += value
            total[1] += 1

    def update(self, output: tuple[dict[str, Any], dict[str, Any]]) -> None:
        pred, target = output
        for i in range(len(pred["text"])):
            sample = batch_row(target, i)
            self._add(sample_scores(pred, sample, i, self.baseline_masks))
            if self.baseline_box is not None and sample["task"] == "rec" and has_box(sample["box"]):
                iou = box_iou(self.baseline_box, [float(b) for b in sample["box"]])
                self._add({"rec/baseline_iou": iou, "rec/baseline_acc@0.2": float(iou > 0.2)})

    def _gathered(self) -> dict[str, list[float]]:
        if idist.get_world_size() == 1:
            return self._totals
        merged: dict[str, list[float]] = {}
        for part in idist.all_gather(json.dumps(self._totals)):
            for name, (total, count) in json.loads(part).items():
                entry = merged.setdefault(name, [0.0, 0])
                entry[0] += total
                entry[1] += count
        return merged

    def compute(self) -> dict[str, float] | float:
        totals = self._gathered()
        scores = {self.prefix + n: total / count for n, (total, count) in sorted(totals.items()) if count > 0}
        if not scores:
            raise RuntimeError("InstructionScores saw no sample: the evaluator ran no iteration")
        if not self.summary:
            return scores
        headline = [scores[self.prefix + n] for n in HEADLINE if self.prefix + n in scores]
        return float(np.mean(headline)) if headline else 0.0


def instruction_metrics(
    prefix: str = "val/", baseline_box: Sequence[float] | None = None,
    baseline_masks: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Metric], dict[str, Metric]]:
    """(key metric ``<prefix>score``, additional: every task score and ``<prefix>loss``) for an evaluator."""
    return {f"{prefix}score": InstructionScores(prefix, summary=True)}, {
        f"{prefix}tasks": InstructionScores(prefix, baseline_box=baseline_box, baseline_masks=baseline_masks),
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
        pred, target = engine.state.output["pred"], engine.state.output["label"]
        with self._file().open("a", encoding="utf-8") as handle:
            for i in range(len(pred["text"])):
                handle.write(json.dumps(prediction_row(pred, target, i)) + "\n")


def prediction_row(pred: dict[str, Any], target: dict[str, Any], i: int) -> dict[str, Any]:
    """Sample ``i`` as a JSON row: its reference fields (masks left out: they are scored, not stored), the answer,
    whether a mask was drawn (LaMedSeg) and its scores."""
    sample = batch_row(target, i)
    row = {k: json_value(v) for k, v in sample.items() if k not in MASK_KEYS}
    row["prediction"] = pred["text"][i]
    if "has_mask" in pred:
        row["has_mask"] = bool(pred["has_mask"][i])
    row["scores"] = sample_scores(pred, sample, i)
    return row


def json_value(value: Any) -> Any:
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
