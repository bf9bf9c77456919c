"""lamed_instruct end to end on the demo corpus: stage 1 → stage 2 → evaluation with an image-free control,
inference on a real NIfTI, LoRA merge, resume after a kill, DDP, and clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ..launch import run_module
from .conftest import (
    BUNDLES, bundle_run, check, checked_layout, eval_metrics, lamed_dirs, read_json, with_generated_seg_instructions,
)

BUNDLE = "lamed_instruct"
TRAIN = ["train.json", "demo.json"]
EVALUATE = ["train.json", "evaluate.json", "demo.json"]
INFER = ["train.json", "demo.json", "inference.json"]
SMALL = ["--samples_per_epoch", "64", "--val_samples_per_task", "4"]
ITK_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
REC_QUESTION = "Where is the liver in this image? Please give its box."


def _dirs(demo_dir: Path, clip: Path, out: Path) -> list[str]:
    return lamed_dirs(demo_dir, clip, out)


def _runs(output_dir: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{output_dir / 'mlruns.db'}")
    return client.search_runs(client.get_experiment_by_name(BUNDLE).experiment_id)


@pytest.fixture(scope="module")
def trained(lamed_trained) -> Path:
    return lamed_trained


def _metrics(trained: Path) -> dict:
    return eval_metrics(trained / "eval" / "stage2_test")


def test_demo_uses_the_image(trained):
    """Issue 4's acceptance on the CPU demo (cvqa / plane / REC measured 0.654 / 1.000 / 0.523 against 0.239 / 0.140 /
    0 for the image-free control; docs/performance.md); the closed-VQA bound leaves a little room for other CPUs'
    rounding."""
    m = _metrics(trained)
    assert m["cvqa/acc"] >= 0.58 and m["cvqa/acc"] >= m["control/cvqa/acc"] + 0.2, m
    assert m["cvqa/acc_type1"] >= 0.9 and m["control/cvqa/acc_type1"] <= 0.45, m  # imaging plane: 3 answers
    assert m["cvqa/acc_type3"] >= m["control/cvqa/acc_type3"] + 0.3, m  # organs in view
    assert m["rg/bleu"] > m["control/rg/bleu"] + 0.2 and m["ovqa/bleu"] > m["control/ovqa/bleu"] + 0.2, m
    assert m["rec/acc@0.2"] >= m["rec/baseline_acc@0.2"] + 0.2, m  # boxes, far above the training-average box
    assert m["rec/neg_acc"] >= 0.85, m  # absent organs are refused, not boxed
    assert (trained / "timing.json").is_file()


def test_demo_llm_answers_from_a_case_summary(trained, demo_dir):
    """The pre-trained demo LLM has the skill LaMed builds on: it answers closed VQA from a case summary standing
    where the image tokens go — and not without it."""
    from m3d_components.data import prompts
    from m3d_components.data.vqa import read_vqa_csv
    from m3d_components.engines.demo import case_summary
    from m3d_components.models.local import load_causal_lm, load_tokenizer

    llm = demo_dir / "models" / "llm"
    tokenizer = load_tokenizer(llm, padding_side="left")
    model = load_causal_lm(llm).eval()
    attributes = read_json(demo_dir / "demo_attributes.json")
    summary = {str((demo_dir / a["image"]).resolve()): case_summary(a) for a in attributes.values()}
    rows = read_vqa_csv(demo_dir / "M3D_VQA_test.csv", demo_dir, check_files=False)
    accuracy = {}
    for with_summary in (True, False):
        correct = []
        for start in range(0, len(rows), 128):
            batch, questions = rows[start:start + 128], []
            for row in batch:
                choices = {c: row[f"choice_{c}"] for c in prompts.CHOICE_LETTERS}
                question, _ = prompts.closed_vqa_example(row["vqa_question"], choices, row["answer_letter"])
                context = summary[str(Path(row["image"]).resolve())] + " " if with_summary else ""
                questions.append(context + question)
            encoded = tokenizer(questions, padding=True, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**encoded, max_new_tokens=4, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            answers = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += [a.strip().startswith(r["answer_letter"] + ".") for a, r in zip(answers, batch)]
        accuracy[with_summary] = float(np.mean(correct))
    assert accuracy[True] >= 0.75 and accuracy[False] <= 0.45, accuracy  # measured 0.86 and 0.26


def test_stage2_started_from_stage1_and_saved_only_trained_weights(trained):
    log = (trained / "stage2.log").read_text()
    assert f"initialised from {trained / 'models' / 'stage1' / 'trained.safetensors'}" in log
    stage1 = load_file(str(trained / "models" / "stage1" / "trained.safetensors"))
    assert {k.split(".")[0] for k in stage1} == {"perceiver", "llm"}
    assert [k for k in stage1 if k.startswith("llm.")] == ["llm.model.embed_tokens.weight"]
    stage2 = load_file(str(trained / "models" / "stage2" / "trained.safetensors"))
    assert any(".lora_A." in k for k in stage2) and "llm.lm_head.weight" in stage2
    assert not any(k.endswith("q_proj.weight") or "base_layer" in k for k in stage2)  # frozen LLM weights stay out
    runs = _runs(trained / "eval")
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3
    evaluation = [r for r in runs if r.info.run_name.startswith("lamed_instruct-evaluate")][0]
    assert "control/cvqa/acc" in evaluation.data.metrics and "cvqa/acc" in evaluation.data.metrics


def test_predictions_are_written_per_sample(trained):
    rows = [json.loads(line) for line in (trained / "eval" / "stage2_test" / "predictions.jsonl").open()]
    tasks = {r["task"] for r in rows}
    assert tasks == {"caption", "vqa_closed", "vqa_open", "rec", "reg"}
    closed = [r for r in rows if r["task"] == "vqa_closed"]
    assert all(set(r) >= {"question", "answer", "prediction", "answer_letter", "scores"} for r in closed)


@pytest.mark.skipif(not ITK_T1.is_file(), reason="Debian package insighttoolkit5-examples not installed")
def test_inference_on_a_real_nifti_gives_boxes_in_voxels_and_mm(trained, demo_dir, clip_trained, tmp_path):
    out = tmp_path / "answer"
    check(bundle_run(BUNDLE, INFER, *_dirs(demo_dir, clip_trained, trained), "--image", str(ITK_T1),
                     "--question", REC_QUESTION, "--window", "percentile", "--inference_dir", str(out)))
    answer = read_json(out / "answer.json")
    assert answer["answer"] and answer["image"] == str(ITK_T1)
    assert (out / "KmeansTest_T1UCharRaw_canonical.npy").is_file()
    for box in answer["boxes"]:
        assert len(box["source_voxel"]) == 6 and len(box["patient_mm_ras"]) == 6
        assert Path(box["png"]).is_file()


def test_m3d_infer_on_a_demo_volume(trained, demo_dir, clip_trained, tmp_path):
    """`m3d infer --demo` reads the models of an `m3d demo` run (its folder layout, made here from the fixtures)."""
    demo_run = tmp_path / "demo_run"
    for bundle, made in (("clip_pretrain", clip_trained), (BUNDLE, trained)):
        (demo_run / bundle).mkdir(parents=True)
        (demo_run / bundle / "models").symlink_to(made / "models")
    volume = demo_dir / "images" / "test" / "test_00000.npy"
    command = ["infer", "--image", str(volume), "--demo", "--demo_run", str(demo_run),
               "--question", REC_QUESTION, "--out", str(tmp_path), "--demo_dir", str(demo_dir)]
    result = run_module("m3d_components.cli", *command, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = read_json(tmp_path / "answer.json")
    assert answer["answer"] and answer["question"] == REC_QUESTION and answer["image"] == str(volume)
    assert all(Path(b["png"]).is_file() and len(b["voxel"]) == 6 for b in answer["boxes"])
    assert json.loads(result.stdout[result.stdout.index("{"):]) == answer  # printed as well

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.random.default_rng(0).random((1, 16, 64, 64), dtype=np.float32))
    command[command.index(str(volume))] = str(wrong)
    result = run_module("m3d_components.cli", *command, timeout=600)
    assert result.returncode != 0 and "wrong shape (1, 16, 64, 64), expected (1, 32, 64, 64)" in result.stderr


def test_merged_folder_loads_without_peft_and_matches(trained, demo_dir, clip_trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from m3d_components.models.lamed import lamed_tokenizer

    merged = tmp_path / "merged"
    check(bundle_run(BUNDLE, INFER, *_dirs(demo_dir, clip_trained, trained), "--merged_dir", str(merged),
                     run_id="merge"))
    llm = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any("lora" in n for n, _ in llm.named_parameters())
    tokenizer = lamed_tokenizer(merged)
    ids = tokenizer(["Which imaging plane does this volume show?"], return_tensors="pt")["input_ids"]
    # The merged weights equal base + scaled LoRA: compare with the adapter model built from the same files.
    from m3d_components.models.lamed import build_lamed
    from m3d_components.models.trainable import LoRASettings, load_trained_state, prepare_training
    from m3d_components.models.vision import ViTConfig

    vit = ViTConfig(img_size=(32, 64, 64), patch_size=(4, 16, 16), hidden_size=128, mlp_dim=256, num_layers=4,
                    num_heads=4, input_mean=0.29, input_std=0.2)
    base = str(demo_dir / "models" / "llm")
    parts = read_json(BUNDLES / BUNDLE / "configs" / "demo.json")["recipes#2#trainable"]
    model = prepare_training(build_lamed(vit, base, lamed_tokenizer(base)), parts, LoRASettings())
    load_trained_state(model, trained / "models" / "stage2" / "trained.safetensors")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, model.llm(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    vision = load_file(str(merged / "lamed_vision.safetensors"))
    torch.testing.assert_close(vision["perceiver.projector.0.weight"], model.perceiver.projector[0].weight)


def test_killed_run_resumes(demo_dir, clip_trained, tmp_path, clean_mlflow_env):
    dirs = _dirs(demo_dir, clip_trained, tmp_path)
    small = [*dirs, "--stage", "1", "--samples_per_epoch", "96", "--batch_size", "8", "--epochs", "2",
             "--checkpoint_interval", "3"]
    killer = tmp_path / "kill.json"
    killer.write_text(json.dumps({
        "+imports": ["$import ignite", "$from tests.bundles.kill import kill_now"],
        "run": ["$me.checkpoint.attach(@train#trainer, @checkpoint#loader, @checkpoint#saver)",
                "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=16), kill_now)",
                "$@train#trainer.run()"],
    }))
    killed = bundle_run(BUNDLE, [*TRAIN, str(killer)], *small)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = tmp_path / "models" / "stage1" / "resume_checkpoint_iteration=15.pt"
    assert checkpoint.is_file()  # 12 iterations per epoch: the kill comes inside epoch 2
    saved = torch.load(checkpoint, weights_only=True)["network"]
    assert sorted(k.split(".")[0] for k in saved) == ["llm"] + ["perceiver"] * 4  # trained tensors only
    resumed = check(bundle_run(BUNDLE, TRAIN, *small))
    log = resumed.stdout + resumed.stderr
    assert "Restored all variables" in log and "resume_checkpoint_iteration=15.pt" in log
    assert "Epoch[1] Complete" not in log and "Epoch[2] Complete" in log
    state = torch.load(tmp_path / "models" / "stage1" / "resume_final.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 24


def test_two_process_gloo_training(demo_dir, clip_trained, tmp_path, clean_mlflow_env):
    """DDP (multi_gpu_train.json) on stage 1 under torchrun: replicas checked equal at the end, one MLflow run."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = bundle_run(BUNDLE, [*TRAIN, "multi_gpu_train.json"], *_dirs(demo_dir, clip_trained, tmp_path),
                        "--stage", "1", *SMALL, "--batch_size", "4", "--gradient_accumulation", "2", launcher=launcher)
    check(result)
    assert "replicas in sync" in result.stdout
    assert (tmp_path / "models" / "stage1" / "trained.safetensors").is_file()
    runs = _runs(tmp_path / "eval")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_two_process_fsdp_stage2(trained, demo_dir, clip_trained, tmp_path, clean_mlflow_env):
    """fsdp_train.json on stage 2 (LoRA): each rank holds half of every layer, validation generates in step on both
    ranks, and the export gathers whole tensors — it loads into an unsharded model."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    stage1 = trained / "models" / "stage1" / "trained.safetensors"
    result = bundle_run(BUNDLE, [*TRAIN, "multi_gpu_train.json", "fsdp_train.json"],
                        *_dirs(demo_dir, clip_trained, tmp_path), "--stage", "2", "--init_weights", str(stage1),
                        *SMALL, "--batch_size", "4", launcher=launcher)
    check(result)
    assert "replicas in sync" in result.stdout
    exported = load_file(str(tmp_path / "models" / "stage2" / "trained.safetensors"))
    reference = load_file(str(trained / "models" / "stage2" / "trained.safetensors"))
    assert exported.keys() == reference.keys() and any("lora_B" in k for k in exported)
    assert all(exported[k].shape == reference[k].shape for k in exported)  # whole tensors, not one rank's shard
    assert not list((tmp_path / "models" / "stage2").glob("resume_*.pt"))  # no resume checkpoint under FSDP
    runs = _runs(tmp_path / "eval")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_clear_errors_before_any_training(demo_dir, clip_trained, tmp_path):
    dirs = _dirs(demo_dir, clip_trained, tmp_path)
    missing_llm = bundle_run(BUNDLE, TRAIN, *dirs, "--stage", "1", "--llm_path", str(tmp_path / "no-llm"))
    assert missing_llm.returncode != 0 and "LLM folder" in missing_llm.stderr and "does not exist" in missing_llm.stderr
    no_stage1 = bundle_run(BUNDLE, TRAIN, *dirs, "--stage", "2")
    assert no_stage1.returncode != 0 and "run stage 1 (--stage 1) first" in no_stage1.stderr
    long_question = bundle_run(BUNDLE, TRAIN, *dirs, "--stage", "1", *SMALL, "--max_length", "24")
    assert long_question.returncode != 0 and "leaving no room for an answer" in long_question.stderr
    no_room = bundle_run(BUNDLE, TRAIN, *dirs, "--stage", "1", "--max_length", "16")
    assert no_room.returncode != 0 and "max_length 16 leaves no room for the 16 image tokens" in no_room.stderr
    stage3 = bundle_run(BUNDLE, TRAIN, *dirs, "--stage", "3")
    assert stage3.returncode != 0 and "stage: 3 is not one of the stages with a recipe (1, 2)" in stage3.stderr
    assert not (tmp_path / "models" / "stage1" / "trained.safetensors").exists()


def test_bundle_layout_and_metadata():
    assert "peft" in checked_layout(BUNDLE)["required_packages_version"]


def test_generated_seg_instructions_feed_the_training_mixture(demo_dir, tmp_path):
    """`m3d generate seg-instructions` output replaces the on-the-fly REC/REG templates (`seg_instructions_dir`)."""
    from m3d_components.data.instruction_file import InstructionFileDataset

    summary, parser = with_generated_seg_instructions(BUNDLE, demo_dir, tmp_path)
    datasets = parser.get_parsed_content("train#datasets")
    for task in ("rec", "reg"):
        assert isinstance(datasets[task], InstructionFileDataset)
        assert len(datasets[task]) == summary["splits"]["train"][f"{task}/label"] * 2
    sample = datasets["rec"][0]
    assert sample["task"] == "rec" and sample["seg"].shape[1:] == (32, 64, 64)
    validation = parser.get_parsed_content("validate#datasets")
    assert len(validation["reg"]) == summary["splits"]["validation"]["masks"] * 2
