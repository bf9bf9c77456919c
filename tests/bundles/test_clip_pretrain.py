"""clip_pretrain end to end on the demo corpus: learning, control, evaluation, inference, resume, DDP."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from .conftest import bundle_run, check, checked_layout, read_json

TRAIN = ["train.json", "demo.json"]
SHUFFLED = "$md.cap.permute_texts(md.cap.read_cap_split(@cap_json, 'train', @dataset_dir), 0)"
SUBSET = "$md.cap.read_cap_split(@cap_json, 'train', @dataset_dir)[:{n}]"


def _dirs(demo_dir: Path, out: Path) -> list[str]:
    return ["--demo_dir", str(demo_dir), "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "eval")]


def _finished_runs(output_dir: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{output_dir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("clip_pretrain")
    return client.search_runs(experiment.experiment_id)


@pytest.fixture(scope="module")
def trained(clip_trained) -> Path:
    return clip_trained


@pytest.fixture(scope="module")
def monkeypatch_module(clean_mlflow_env):
    return clean_mlflow_env


def _evaluate(demo_dir: Path, out: Path, split: str = "test") -> dict:
    check(bundle_run("clip_pretrain", [*TRAIN, "evaluate.json"], *_dirs(demo_dir, out), "--eval_split", split))
    return read_json(out / "eval" / f"metrics_{split}.json")["metrics"]


def test_demo_training_learns_retrieval(trained, demo_dir):
    runs = _finished_runs(trained / "eval")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["batch_size"] == "32" and runs[0].data.params["precision"] == "bf16"
    assert "val/itr/ir_r1_at_40" in runs[0].data.metrics and "train/loss" in runs[0].data.metrics
    assert (trained / "models" / "vision_encoder.safetensors").is_file()
    metrics = _evaluate(demo_dir, trained)
    # chance: R@1 = 0.01, R@10 = 0.10 on a pool of 100
    assert metrics["itr/ir_r1@100"] >= 0.3 and metrics["itr/tr_r1@100"] >= 0.3, metrics
    assert metrics["itr/ir_r10@100"] >= 0.8 and metrics["itr/tr_r10@100"] >= 0.8, metrics


def test_evaluate_reproduces_the_best_validation_score(trained, demo_dir):
    metrics = _evaluate(demo_dir, trained, split="validation")
    run = _finished_runs(trained / "eval")[-1]
    client = mlflow.MlflowClient(f"sqlite:///{trained / 'eval' / 'mlruns.db'}")
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val/itr/mean_r1"))
    assert metrics["itr/mean_r1"] == pytest.approx(best, abs=1e-6)
    statuses = {r.info.status for r in _finished_runs(trained / "eval")}
    assert statuses == {"FINISHED"}


def test_exported_vision_encoder_loads_into_a_fresh_vit(trained):
    from m3d_components.models.vision import ViTConfig, VisionTransformer3D, load_vit_weights

    vit = VisionTransformer3D(ViTConfig(img_size=(32, 64, 64), patch_size=(4, 16, 16), hidden_size=128, mlp_dim=256,
                                        num_layers=4, num_heads=4))
    load_vit_weights(vit, trained / "models" / "vision_encoder.safetensors")
    full = load_file(str(trained / "models" / "vision_encoder.safetensors"))
    assert torch.equal(vit.state_dict()["norm.weight"], full["norm.weight"])


def test_inference_writes_embeddings(trained, demo_dir):
    check(bundle_run("clip_pretrain", [*TRAIN, "inference.json"], *_dirs(demo_dir, trained)))
    tensors = load_file(str(trained / "eval" / "embeddings.safetensors"))
    index = read_json(trained / "eval" / "embeddings.json")
    assert tensors["image_embeds"].shape == (100, 128) and tensors["text_embeds"].shape == (100, 128)
    assert index["rows"] == 100 and index["sources"][0].endswith("test_00000.npy")
    volumes = str(demo_dir / "images" / "val" / "*.npy")
    check(bundle_run("clip_pretrain", [*TRAIN, "inference.json"], *_dirs(demo_dir, trained), "--volume_glob", volumes,
                     "--embeddings_path", str(trained / "eval" / "val_images.safetensors")))
    assert set(load_file(str(trained / "eval" / "val_images.safetensors"))) == {"image_embeds"}


def test_shuffled_pairs_control_stays_near_chance(demo_dir, tmp_path, monkeypatch_module):
    # a third of the demo's epochs: real pairs are far above chance by then (validation mean R@1 0.24 on 40 pairs
    # after 10 epochs, chance 0.025), so the control keeps its power at a third of the CI time
    check(bundle_run("clip_pretrain", TRAIN, *_dirs(demo_dir, tmp_path), "--train#records", SHUFFLED, "--epochs", "10"))
    metrics = _evaluate(demo_dir, tmp_path)
    assert metrics["itr/ir_r1@100"] <= 0.06 and metrics["itr/tr_r1@100"] <= 0.06, metrics
    assert metrics["itr/ir_r10@100"] <= 0.25 and metrics["itr/tr_r10@100"] <= 0.25, metrics


def test_bad_setting_fails_before_models_load(demo_dir, tmp_path):
    start = time.monotonic()
    result = bundle_run("clip_pretrain", TRAIN, *_dirs(demo_dir, tmp_path), "--batch_size", "1")
    assert result.returncode != 0 and "batch_size: 1 is less than the minimum of 2" in result.stderr
    assert not (tmp_path / "models").exists() and time.monotonic() - start < 120


def test_misspelled_setting_long_texts_and_empty_loader_stop_the_run(demo_dir, tmp_path):
    """A misspelled override would otherwise be added as a new key and ignored; texts longer than the encoder's
    positions would fail inside BERT; a training split smaller than one batch would give a run that ends
    "successfully" without a step."""
    typo = bundle_run("clip_pretrain", TRAIN, *_dirs(demo_dir, tmp_path), "--lerning_rate", "1e-5")
    assert typo.returncode != 0 and "lerning_rate: not a key of these configs (did you mean learning_rate?)" in typo.stderr
    long_text = bundle_run("clip_pretrain", TRAIN, *_dirs(demo_dir, tmp_path), "--max_text_length", "1024")
    assert long_text.returncode != 0 and "max_text_length 1024 exceeds the 512 positions of the text encoder" in \
        long_text.stderr
    empty = bundle_run("clip_pretrain", TRAIN, *_dirs(demo_dir, tmp_path), "--train#records", SUBSET.format(n=16))
    assert empty.returncode != 0, empty.stdout[-2000:]
    assert "the training data gives no batch: 16 samples and batch_size 32" in empty.stderr
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("*.safetensors"))


def test_killed_run_resumes(demo_dir, tmp_path, monkeypatch_module):
    small = [*_dirs(demo_dir, tmp_path), "--train#records", SUBSET.format(n=256), "--epochs", "2",
             "--checkpoint_interval", "3"]
    killer = tmp_path / "kill.json"
    killer.write_text(json.dumps({
        "+imports": ["$import ignite", "$from tests.bundles.kill import kill_now"],
        "run": ["$me.checkpoint.attach(@train#trainer, @checkpoint#loader, @checkpoint#saver)",
                "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=10), "
                "kill_now)",
                "$@train#trainer.run()"],
    }))
    killed = bundle_run("clip_pretrain", [*TRAIN, str(killer)], *small)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "models" / "resume_checkpoint_iteration=9.pt").is_file()  # 8 iterations per epoch
    resumed = check(bundle_run("clip_pretrain", TRAIN, *small))
    log = resumed.stdout + resumed.stderr
    assert "Restored all variables" in log and "resume_checkpoint_iteration=9.pt" in log
    assert "Epoch[1] Complete" not in log and "Epoch[2] Complete" in log  # continued inside epoch 2
    state = torch.load(tmp_path / "models" / "resume_final.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 16 and state["trainer"]["epoch_length"] == 8  # 2 epochs of 8


def test_two_process_gloo_training(demo_dir, tmp_path, monkeypatch_module):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = bundle_run("clip_pretrain", [*TRAIN, "multi_gpu_train.json"], *_dirs(demo_dir, tmp_path),
                        "--train#records", SUBSET.format(n=128), "--epochs", "1", launcher=launcher)
    check(result)
    assert "replicas in sync" in result.stdout  # ReplicaSyncCheck compared both ranks' weights at the end
    assert (tmp_path / "models" / "model.safetensors").is_file()
    runs = _finished_runs(tmp_path / "eval")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 1 logs nothing
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    assert "train.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}  # the configs that ran


def test_bundle_layout_and_metadata():
    checked_layout("clip_pretrain")
