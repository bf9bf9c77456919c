"""m3d_bench on the lamed_seg demo checkpoint: every task scored, a crash mid-run resumed without regenerating
finished samples, one MLflow run per checkpoint that ends FINISHED, and `m3d compare` over them."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from m3d_components.engines import bench
from m3d_components.engines.paths import run_bundle

from .conftest import checked_layout, read_json

CONFIGS = ["evaluate.json", "demo.json"]


def _settings(demo_dir: Path, clip: Path, lamed: Path, seg: Path, out: Path) -> dict:
    return {"output_dir": str(out), "samples_per_task": 6, "bootstrap_resamples": 200, "demo_dir": str(demo_dir),
            "clip_weights": str(clip / "models" / "model.safetensors"),
            "demo_vit": str(clip / "models" / "vision_encoder.safetensors"),
            "lamed_weights": str(lamed / "models" / "stage2" / "trained.safetensors"),
            "seg_weights": str(seg / "models" / "trained.safetensors")}


def test_bench_resumes_after_a_crash_and_tracks_each_checkpoint(clip_trained, lamed_trained, seg_trained, demo_dir,
                                                                tmp_path, monkeypatch, clean_mlflow_env):
    settings = _settings(demo_dir, clip_trained, lamed_trained, seg_trained, tmp_path)
    append, written = bench.PredictionLog.append, []

    def crash_on_third_batch(log, rows):
        rows = list(rows)
        if len(written) == 2:
            with log.path.open("a") as handle:
                handle.write(json.dumps(rows[0])[:20])  # a line cut by the crash
            raise RuntimeError("simulated crash")
        written.append(len(rows))
        append(log, rows)

    monkeypatch.setattr(bench.PredictionLog, "append", crash_on_third_batch)
    with pytest.raises(RuntimeError) as crash:
        run_bundle("m3d_bench", CONFIGS, **settings)
    assert "simulated crash" in str(crash.value.__cause__)
    first = tmp_path / "lamed-demo" / "predictions.jsonl"
    before = bench.PredictionLog(first).rows()
    assert len(before) == sum(written) and not (tmp_path / "lamed-demo" / "summary.json").exists()

    regenerated = []
    monkeypatch.setattr(bench.PredictionLog, "append", lambda log, rows: (
        regenerated.extend((log.path.parent.name, r["id"]) for r in rows), append(log, rows))[1])
    run_bundle("m3d_bench", CONFIGS, **settings)
    after = bench.PredictionLog(first).rows()
    assert after[: len(before)] == before  # finished samples kept, not regenerated
    assert not {("lamed-demo", r["id"]) for r in before} & set(regenerated)
    assert len({r["id"] for r in after}) == len(after) == 5 * 6  # the text tasks, 6 samples each

    summary = read_json(tmp_path / "lamed-demo" / "summary.json")["metrics"]
    for key in ("rg/bleu", "rg/rougeL", "cvqa/acc", "cvqa/acc_lenient", "ovqa/bleu", "rec/iou", "reg/bleu"):
        assert key in summary and summary[key]["ci95"][0] <= summary[key]["value"] <= summary[key]["ci95"][1]
    seg = read_json(tmp_path / "seg-demo" / "summary.json")["metrics"]
    assert {"ss/dice", "ss/neg_acc"} & set(seg) and {"res/dice", "res/neg_acc"} & set(seg) and "rg/bleu" not in seg
    itr = read_json(tmp_path / "clip-demo" / "summary.json")["metrics"]
    assert itr["itr/ir_r1@100"]["n"] == 100 and itr["itr/ir_r10@100"]["value"] >= 0.3  # chance: 0.1

    regenerated.clear()
    run_bundle("m3d_bench", CONFIGS, **settings)  # everything done: nothing generated, runs continued
    assert not regenerated
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs(client.get_experiment_by_name("m3d_bench").experiment_id)
    assert len({r.info.run_name for r in runs}) == len(runs)
    assert sorted(r.data.tags["m3d.checkpoint"] for r in runs) == [
        "clip-demo", "lamed-demo", "lamed-demo-image_free", "seg-demo", "seg-demo-image_free"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "cvqa/acc" in (tmp_path / "comparison.md").read_text()
    table = bench.compare_runs(f"sqlite:///{tmp_path / 'mlruns.db'}", tmp_path / "compare")
    assert "seg-demo-image_free" in table.splitlines()[0] and (tmp_path / "compare.png").is_file()


def test_bench_settings_are_checked_first(tmp_path):
    from m3d_components.engines.settings import SettingsError

    with pytest.raises(RuntimeError) as err:
        run_bundle("m3d_bench", CONFIGS, tasks=["rgx"], output_dir=str(tmp_path))
    cause = err.value.__cause__
    assert isinstance(cause, SettingsError) and "tasks/0: 'rgx' is not one of" in str(cause)
    assert not list(tmp_path.iterdir())  # nothing ran


def test_bundle_layout_and_metadata():
    meta = checked_layout("m3d_bench", ("evaluate.json", "demo.json", "settings_schema.json"), large_files=False)
    assert not meta["supported_apps"]
