"""``m3d demo``: run the bundles' demo configurations one after another and summarise what they learned.

Each stage is a bundle run exactly as a user would type it (``train.json`` + ``demo.json``, then ``evaluate.json``),
so the demo exercises the real configs. Stages available so far: ``clip`` (M3D-CLIP pre-training and retrieval).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from monai.bundle import run as bundle_run

from m3d_components.engines.paths import find_bundle

__all__ = ["STAGES", "chance_recall", "demo_table", "run_demo"]

logger = logging.getLogger(__name__)

STAGES = ("clip",)
_BUNDLES = {"clip": "clip_pretrain"}


def chance_recall(k: int, pool: int) -> float:
    """Recall@k of a random ranking of ``pool`` candidates."""
    return min(k, pool) / pool


def _run(bundle: str, configs: list[str], **overrides) -> None:
    root = Path(find_bundle(bundle))
    files = [str(root / "configs" / c) for c in configs]
    bundle_run(config_file=files, logging_file=str(root / "configs" / "logging.conf"), **overrides)


def run_demo(out_dir: str | os.PathLike = "demo_run", stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
    """Train and evaluate each stage on the demo corpus; outputs go under ``out_dir/<bundle>``.

    Returns:
        stage → the evaluation metrics written by its ``evaluate.json``.
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown demo stage(s) {sorted(unknown)}; available: {STAGES}")
    out_dir = Path(out_dir).resolve()
    results = {}
    for stage in stages:
        bundle = _BUNDLES[stage]
        dirs = {"output_dir": str(out_dir / bundle / "eval"), "ckpt_dir": str(out_dir / bundle / "models")}
        logger.info("demo stage %s: training %s", stage, bundle)
        _run(bundle, ["train.json", "demo.json"], **dirs)
        _run(bundle, ["train.json", "demo.json", "evaluate.json"], **dirs)
        results[stage] = json.loads((out_dir / bundle / "eval" / "metrics_test.json").read_text())["metrics"]
    return results


def demo_table(results: dict[str, dict]) -> str:
    """A Markdown table of every metric next to the value a chance-level model would get."""
    lines = ["| stage | metric | trained | chance |", "|---|---|---|---|"]
    for stage, metrics in results.items():
        for key, value in sorted(metrics.items()):
            chance = ""
            if "_r" in key and "@" in key:
                k, pool = key.rsplit("_r", 1)[1].split("@")
                chance = f"{chance_recall(int(k), int(pool)):.3f}"
            lines.append(f"| {stage} | {key} | {value:.3f} | {chance} |")
    return "\n".join(lines)
