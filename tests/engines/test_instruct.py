"""Task scores, the generating inferer and the prediction file, on real tiny models and hand-made outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ignite.engine import Engine

from m3d_components.engines.instruct import InstructionScores, PredictionWriter, score_mask_sample, score_sample

NAN_BOX = [math.nan] * 6
BOX = [0.1, 0.2, 0.2, 0.5, 0.6, 0.6]


def test_scores_per_task():
    closed = {"answer_letter": "B", "question_type": 1, "choices": {"A": "Axial", "B": "Sagittal", "C": "x", "D": "y"}}
    assert score_sample("vqa_closed", "B. Sagittal", closed) == {
        "cvqa/acc": 1.0, "cvqa/acc_type1": 1.0, "cvqa/acc_lenient": 1.0}
    assert score_sample("vqa_closed", "A. Axial B. Sagittal", closed)["cvqa/acc"] == 0.0
    rec = score_sample("rec", "The box is [0.1, 0.2, 0.2, 0.5, 0.6, 0.6].", {"box": BOX})
    assert rec == {"rec/iou": pytest.approx(1.0), "rec/acc@0.2": 1.0, "rec/acc@0.5": 1.0}
    assert score_sample("rec", "It is not here.", {"box": BOX})["rec/iou"] == 0.0  # no box counts as a miss
    assert score_sample("rec", "There is no liver.", {"box": NAN_BOX}) == {"rec/neg_acc": 1.0}
    assert score_sample("rec", "At [0.1, 0.2, 0.2, 0.5, 0.6, 0.6].", {"box": NAN_BOX}) == {"rec/neg_acc": 0.0}
    assert score_sample("caption", "Axial CT.", {"answer": "Axial CT."})["rg/bleu"] == pytest.approx(1.0)


def _output(texts, **target):
    return {"pred": {"text": texts, "loss": torch.tensor(1.0)}, "label": target}


def test_scores_average_over_samples_and_baseline_box():
    metric = InstructionScores(prefix="val/", baseline_box=BOX)
    metric.reset()
    metric.update(({"text": ["B. x", "C. y"]}, {"task": ["vqa_closed"] * 2, "answer_letter": ["B", "B"],
                                       "question_type": [1, 2], "choices": [None, None]}))
    metric.update(({"text": ["[0.1, 0.2, 0.2, 0.5, 0.6, 0.6]"]}, {"task": ["rec"], "box": [torch.tensor(BOX)]}))
    scores = metric.compute()
    assert scores["val/cvqa/acc"] == 0.5 and scores["val/cvqa/acc_type1"] == 1.0 and scores["val/cvqa/acc_type2"] == 0
    assert scores["val/rec/baseline_acc@0.2"] == 1.0 and scores["val/rec/acc@0.2"] == 1.0
    assert "val/rg/bleu" not in scores  # tasks not evaluated are not reported as 0
    summary = InstructionScores(prefix="val/", summary=True)
    summary.reset()
    summary.update(({"text": ["B. x"]}, {"task": ["vqa_closed"], "answer_letter": ["B"], "question_type": [1],
                               "choices": [None]}))
    assert summary.compute() == 1.0


def test_prediction_writer_truncates_on_start_and_writes_a_line_per_sample(tmp_path):
    engine = Engine(lambda e, b: _output(["B. x", "no box"], task=["vqa_closed", "rec"], answer_letter=["B", None],
                                         question_type=[1, None], choices=[None, None],
                                         box=[torch.tensor(NAN_BOX), torch.tensor(BOX)]))
    path = tmp_path / "predictions.jsonl"
    path.write_text("stale\n")
    PredictionWriter(path).attach(engine)
    engine.run([0, 1], max_epochs=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["prediction"] == "B. x" and rows[0]["box"] is None
    assert rows[1]["scores"] == {"rec/iou": 0.0, "rec/acc@0.2": 0.0, "rec/acc@0.5": 0.0}


def _cube(lo: int, hi: int) -> torch.Tensor:
    mask = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    mask[:, lo:hi, lo:hi, lo:hi] = True
    return mask


def test_mask_scores_count_negatives_explicitly_and_match_monai():
    from monai.metrics import DiceMetric

    gt = _cube(2, 6)
    probs = _cube(3, 7).float() * 0.9
    scores = score_mask_sample("ss", probs, {"seg": gt, "dataset": "0011", "class_name": "Left Kidney"},
                               baseline=_cube(2, 5))
    metric = DiceMetric(include_background=True)
    metric(probs[None] > 0.5, gt[None])
    assert scores["ss/dice"] == pytest.approx(float(metric.aggregate())) == pytest.approx(2 * 27 / (64 + 64))
    assert scores["ss/dice/0011/left_kidney"] == scores["ss/dice/0011"] == scores["ss/dice"]
    odd = score_mask_sample("ss", probs, {"seg": gt, "dataset": "AMOS", "class_name": "Prostate/Uterus (F)"})
    assert "ss/dice/amos/prostate_uterus_f" in odd  # one segment per name, MLflow-safe characters only
    assert scores["ss/soft_dice"] == pytest.approx(2 * 0.9 * 27 / (0.9 * 64 + 64 + 1))
    assert scores["ss/baseline_dice"] == pytest.approx(2 * 27 / (27 + 64)) and scores["ss/mask_rate"] == 1.0
    # no [SEG] for a present target: Dice 0; negatives: right only without a mask
    assert score_mask_sample("res", None, {"seg": gt})["res/dice"] == 0.0
    empty = torch.zeros_like(gt)
    assert score_mask_sample("ss", None, {"seg": empty}) == {"ss/neg_acc": 1.0, "ss/dice_all": 1.0}
    assert score_mask_sample("ss", probs, {"seg": empty}) == {"ss/neg_acc": 0.0, "ss/dice_all": 0.0}
    assert score_mask_sample("ss", probs * 0.1, {"seg": empty})["ss/neg_acc"] == 1.0  # nothing above 0.5


def test_scores_of_a_segmentation_batch():
    gt = torch.stack([_cube(2, 6), torch.zeros(1, 8, 8, 8, dtype=torch.bool)])
    pred = {"text": ["It is [SEG].", "There is no spleen."], "mask_probs": gt.float(),
            "has_mask": torch.tensor([True, False])}
    metric = InstructionScores(prefix="")
    metric.reset()
    metric.update((pred, {"task": ["ss", "ss"], "seg": gt, "dataset": ["d", "d"], "class_name": ["liver", "spleen"]}))
    scores = metric.compute()
    assert scores["ss/dice"] == 1.0 and scores["ss/neg_acc"] == 1.0 and scores["ss/dice_all"] == 1.0
    with pytest.raises(ValueError, match="needs masks"):
        metric.update(({"text": ["x"]}, {"task": ["ss"], "seg": gt[:1]}))


def test_generation_inferer_with_a_static_cache_answers_the_same(llama_dir):
    """``static_cache`` (the bundles' ``eval_static_cache`` / m3d_bench's ``static_cache``) reaches generation and
    changes nothing in the answers or the loss."""
    from m3d_components.engines.collate import InstructionCollator
    from m3d_components.engines.instruct import GenerationInferer
    from tests.conftest import N_IMAGE_TOKENS, tiny_lamed
    from tests.models.test_lamed import _samples

    model, tokenizer = tiny_lamed(llama_dir)
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(_samples())
    image = batch.pop("image")
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    dynamic = GenerationInferer(tokenizer, max_new_tokens=8)(image, model, **tensors)
    static = GenerationInferer(tokenizer, max_new_tokens=8, static_cache=True)(image, model, **tensors)
    assert static["text"] == dynamic["text"] and len(static["text"]) == 3
    torch.testing.assert_close(static["loss"], dynamic["loss"])
