"""The `m3d` command as a user types it (`python -m m3d_components.cli`, see tests/launch.py; real files)."""

import inspect
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from m3d_components.cli import M3DCommand
from m3d_components.data.demo import make_demo_data

from .launch import run_module

ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")


def m3d(*args: str) -> subprocess.CompletedProcess:
    return run_module("m3d_components.cli", *args, cwd=Path.cwd())


def test_demo_defaults_match_the_library():
    cli = inspect.signature(M3DCommand.make_demo_data).parameters
    lib = inspect.signature(make_demo_data).parameters
    for name in ("n_train", "n_val", "n_test", "seed"):
        assert cli[name].default == lib[name].default, name


def test_make_demo_data_then_validate_every_format(tmp_path):
    out = tmp_path / "demo"
    made = m3d("make-demo-data", str(out), "--n-train", "6", "--n-val", "2", "--n-test", "3", "--size", "32,64,64")
    assert made.returncode == 0, made.stderr
    checks = [("m3d-cap", "M3D_Cap.json"), ("m3d-vqa", "M3D_VQA_test.csv"), ("m3d-seg", "M3D_Seg"),
              ("m3d-refseg", "M3D_RefSeg_train.csv")]
    for fmt, index in checks:
        extra = ["--root", str(out)] if fmt == "m3d-seg" else []
        result = m3d("validate-data", fmt, str(out / index), *extra, "--shape", "1,32,64,64")
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 0 and summary["errors"] == 0 and summary["records"] > 0, (fmt, result.stdout)
    # instructions from the demo masks: the validator re-derives every stored box from its mask
    made = m3d("generate", "seg-instructions", "--seg", str(out / "M3D_Seg"), "--root", str(out), "--out",
               str(out / "instructions"), "--splits", "train,test")
    assert made.returncode == 0, made.stderr
    counts = json.loads(made.stdout)["splits"]["test"]
    assert counts["positive"] > 0 and counts["negative"] > 0 and counts["rec/definition"] == counts["masks"]
    result = m3d("validate-data", "m3d-instructions", str(out / "instructions"), "--shape", "1,32,64,64")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and summary["errors"] == 0 and summary["records"] == 6 * 11 * 9, result.stdout


def test_generate_with_a_missing_llm_says_so(tmp_path):
    (tmp_path / "r.txt").write_text("Axial CT of the chest.")
    np.save(tmp_path / "r.npy", np.random.default_rng(0).random((1, 4, 8, 8)).astype(np.float32))
    (tmp_path / "cap.json").write_text(json.dumps({"train": [{"image": "r.npy", "text": "r.txt"}]}))
    result = m3d("generate", "vqa", "--reports", str(tmp_path / "cap.json"), "--llm", "Qwen/Qwen2-72B-Instruct",
                 "--out", str(tmp_path / "vqa.csv"))
    assert result.returncode != 0 and "is not a local folder (a hub id?)" in result.stderr


@pytest.mark.skipif(not ITK.is_file(), reason="Debian package insighttoolkit5-examples not installed")
def test_prepare_volume_from_nifti(tmp_path):
    result = m3d("prepare", "volume", str(ITK), str(tmp_path / "t1.npy"), "--window", "percentile", "--size", "16,32,32")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["spatial_size"] == [16, 32, 32]
    assert (tmp_path / "t1.json").is_file()
    bad = m3d("prepare", "volume", str(tmp_path / "missing.nii.gz"), str(tmp_path / "x.npy"))
    assert bad.returncode != 0 and "missing.nii.gz" in bad.stderr


def test_bad_size_argument_is_explained(tmp_path):
    result = m3d("make-demo-data", str(tmp_path / "d"), "--size", "32,64")
    assert result.returncode != 0 and "three positive integers" in result.stderr


def test_misspelled_infer_option_is_refused_before_anything_loads(tmp_path):
    scan = tmp_path / "scan.npy"
    np.save(scan, np.zeros((32, 64, 64), dtype=np.float32))
    result = m3d("infer", "--image", str(scan), "--question", "Where is the liver?", "--llm_pth", str(tmp_path))
    assert result.returncode != 0
    assert "unknown settings for lamed_instruct (train.json, inference.json)" in result.stderr
    assert "llm_pth: not a key of these configs (did you mean llm_path?)" in result.stderr


def test_missing_scan_and_weights_are_named_before_the_model_is_built(tmp_path):
    result = m3d("infer", "--image", str(tmp_path / "scan.nii.gz"), "--weights", str(tmp_path / "w.safetensors"),
                 "--llm_path", str(tmp_path / "no-llm"))
    assert result.returncode == 2  # a user's mistake: its message, not MONAI's "Failed to evaluate" traceback
    assert f"weights: {tmp_path / 'w.safetensors'} does not exist" in result.stderr
    assert f"image: {tmp_path / 'scan.nii.gz'} does not exist" in result.stderr
    assert "LLM folder" not in result.stderr  # nothing was built
    assert "Traceback" not in result.stderr and "Failed to evaluate" not in result.stderr
    debug = run_module("m3d_components.cli", "infer", "--image", str(tmp_path / "scan.nii.gz"), cwd=Path.cwd(),
                       env={"M3D_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_export_for_monai_label_refuses_a_bundle_it_cannot_run(tmp_path):
    result = m3d("export-monailabel", str(tmp_path / "copy"), "--bundle", "lamed_instruct")
    assert result.returncode == 2 and "not a bundle MONAI Label can run" in result.stderr
    assert not (tmp_path / "copy").exists()
