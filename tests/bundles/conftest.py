"""Running bundles as users do, `python -m monai.bundle run` (forked from a preloaded server, see tests/launch.py;
under `torchrun` in a subprocess), outputs in a temporary folder."""

from __future__ import annotations

import json
import os
import time
import subprocess
from pathlib import Path

import pytest

from ..launch import REPO, run_module

BUNDLES = REPO / "bundles"


def bundle_run(bundle: str, configs: list[str], *overrides: str, env: dict | None = None, timeout: int = 1200,
               launcher: list[str] | None = None, run_id: str = "run") -> subprocess.CompletedProcess:
    """Run ``bundles/<bundle>/configs/<configs…>`` with ``--key value`` overrides (``run_id``: the expression list)."""
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs]
    args = ["run", "--run_id", run_id, "--config_file", str(files), *overrides]
    if launcher is None:
        return run_module("monai.bundle", *args, env=env, timeout=timeout)
    return subprocess.run([*launcher, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return result


def with_generated_seg_instructions(bundle: str, demo_dir: Path, out: Path) -> tuple[dict, object]:
    """`m3d generate seg-instructions` on the demo's train and validation masks, written to ``out``, and the parser
    of ``bundle``'s demo training config reading them (``seg_instructions_dir``)."""
    from monai.bundle import ConfigParser

    from m3d_components.engines.generate import generate_seg_instructions

    summary = generate_seg_instructions(demo_dir / "M3D_Seg", out, splits=("train", "validation"), data_root=demo_dir)
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in ("train.json", "demo.json")])
    parser.update({"demo_dir": str(demo_dir), "seg_instructions_dir": str(out)})
    return summary, parser


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The default demo corpus, generated once per test session (as `demo.json` would on first use)."""
    from m3d_components.engines.demo import ensure_demo_data

    return Path(ensure_demo_data(tmp_path_factory.mktemp("demo") / "demo"))


@pytest.fixture(scope="session")
def clean_mlflow_env():
    """Bundle runs log to the SQLite store in their output folder, whatever the calling shell sets."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        yield mp


@pytest.fixture(scope="session")
def clip_trained(demo_dir, tmp_path_factory, clean_mlflow_env) -> Path:
    """The clip_pretrain demo, trained once per session: its vision encoder starts every LaMed test."""
    out = tmp_path_factory.mktemp("clip")
    check(bundle_run("clip_pretrain", ["train.json", "demo.json"], "--demo_dir", str(demo_dir),
                     "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "eval")))
    return out


TRAINING_CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "demo.json",
                    "settings_schema.json")


def checked_layout(bundle: str, configs=TRAINING_CONFIGS, large_files: bool = True) -> dict:
    """Assert a bundle's zoo layout (docs, license, logging, the given configs, no code) and return its metadata,
    checked for the keys the model zoo requires."""
    root = BUNDLES / bundle
    files = ["LICENSE", "docs/README.md", "configs/metadata.json", "configs/logging.conf",
             *(["large_files.yml"] if large_files else []), *(f"configs/{c}" for c in configs)]
    for name in files:
        assert (root / name).is_file(), name
    meta = read_json(root / "configs" / "metadata.json")
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                "description", "authors", "copyright", "network_data_format", "changelog"):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    assert not list(root.rglob("*.py")), "bundles hold configs and docs only"
    return meta


def eval_metrics(report: Path) -> dict:
    """An evaluation's metrics with images and those of its image-free control (``control/…``), in one dict."""
    return {**read_json(report / "metrics.json")["metrics"], **read_json(report / "metrics_image_free.json")["metrics"]}


def lamed_dirs(demo_dir: Path, clip: Path, out: Path) -> list[str]:
    """Overrides that point a LaMed bundle's demo at the test session's corpus, CLIP encoder and output folder."""
    return ["--demo_dir", str(demo_dir), "--models_dir", str(out / "models"), "--output_dir", str(out / "eval"),
            "--pretrained_vit", str(clip / "models" / "vision_encoder.safetensors")]


@pytest.fixture(scope="session")
def lamed_trained(demo_dir, clip_trained, tmp_path_factory, clean_mlflow_env) -> Path:
    """The lamed_instruct demo as `m3d demo` runs it — stage 1, stage 2, then the test evaluation — once per session
    (lamed_seg continues from its stage 2)."""
    out = tmp_path_factory.mktemp("lamed")
    dirs = lamed_dirs(demo_dir, clip_trained, out)
    train = ["train.json", "demo.json"]
    start = time.monotonic()
    check(bundle_run("lamed_instruct", train, *dirs, "--stage", "1"))
    stage2 = check(bundle_run("lamed_instruct", train, *dirs, "--stage", "2"))
    check(bundle_run("lamed_instruct", ["train.json", "evaluate.json", "demo.json"], *dirs))
    (out / "timing.json").write_text(json.dumps({"seconds": time.monotonic() - start}))
    (out / "stage2.log").write_text(stage2.stdout + stage2.stderr)
    return out


def seg_dirs(demo_dir: Path, clip: Path, lamed: Path, out: Path) -> list[str]:
    """As :func:`lamed_dirs`, continuing from the lamed_instruct demo's stage 2 in ``lamed``."""
    return [*lamed_dirs(demo_dir, clip, out), "--init_weights", str(lamed / "models" / "stage2" / "trained.safetensors")]


@pytest.fixture(scope="session")
def seg_trained(demo_dir, clip_trained, lamed_trained, tmp_path_factory, clean_mlflow_env) -> Path:
    """The lamed_seg demo (training, then the test evaluation), once per session."""
    out = tmp_path_factory.mktemp("seg")
    dirs = seg_dirs(demo_dir, clip_trained, lamed_trained, out)
    start = time.monotonic()
    check(bundle_run("lamed_seg", ["train.json", "demo.json"], *dirs))
    (out / "timing.json").write_text(json.dumps({"train_seconds": time.monotonic() - start}))
    check(bundle_run("lamed_seg", ["train.json", "evaluate.json", "demo.json"], *dirs))
    return out
