"""Running bundles as users do: `python -m monai.bundle run` in a subprocess, outputs in a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


def bundle_run(bundle: str, configs: list[str], *overrides: str, env: dict | None = None, timeout: int = 1200,
               launcher: list[str] | None = None, run_id: str = "run") -> subprocess.CompletedProcess:
    """Run ``bundles/<bundle>/configs/<configs…>`` with ``--key value`` overrides (``run_id``: the expression list)."""
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs]
    command = [*(launcher or [sys.executable]), "-m", "monai.bundle", "run", "--run_id", run_id,
               "--config_file", str(files), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                            env={**os.environ, **(env or {})})
    return result


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return result


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
