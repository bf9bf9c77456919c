"""``m3d demo``: run the bundles' demo configurations one after another and summarise what they learned.

Each stage is a bundle run exactly as a user would type it (``train.json`` + ``demo.json``), so the demo exercises
the real configs. Stages: ``clip`` (M3D-CLIP pre-training), ``lamed`` (LaMed stage 1 and stage 2 on the CLIP vision
encoder), ``seg`` (lamed_seg continuing from stage 2) and ``bench`` (the m3d_bench demo on those checkpoints: every
M3D-Bench task with the library metrics, next to the image-free control). The training stages leave their bundles'
own ``evaluate.json`` out: the bench measures the same tasks on the same checkpoints, and the demo's time is spent once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from m3d_components.engines.paths import run_bundle

__all__ = ["STAGES", "chance_recall", "demo_table", "run_demo"]

logger = logging.getLogger(__name__)

STAGES = ("clip", "lamed", "seg", "bench")
_BUNDLES = {"clip": "clip_pretrain", "lamed": "lamed_instruct", "seg": "lamed_seg", "bench": "m3d_bench"}


def chance_recall(k: int, pool: int) -> float:
    """Recall@k of a random ranking of ``pool`` candidates."""
    return min(k, pool) / pool


def run_demo(out_dir: str | os.PathLike = "demo_run", stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
    """Run each stage on the demo corpus; outputs go under ``out_dir/<bundle>``.

    Returns:
        ``{"bench": metrics}`` when the bench ran (the image-free control's as ``control/…``), else ``{}``.
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown demo stage(s) {sorted(unknown)}; available: {STAGES}")
    out_dir = Path(out_dir).resolve()
    results = {}
    for stage in stages:
        logger.info("demo stage %s", stage)
        metrics = _DEMO_STAGES[stage](out_dir)
        if metrics is not None:
            results[stage] = metrics
    return results


def _clip(out_dir: Path) -> None:
    bundle = _BUNDLES["clip"]
    run_bundle(bundle, ["train.json", "demo.json"], output_dir=str(out_dir / bundle / "eval"),
               ckpt_dir=str(out_dir / bundle / "models"))


def _lamed(out_dir: Path) -> None:
    """Stage 1, then stage 2 from stage 1's weights."""
    bundle = _BUNDLES["lamed"]
    vit = out_dir / _BUNDLES["clip"] / "models" / "vision_encoder.safetensors"
    dirs = {"output_dir": str(out_dir / bundle / "eval"), "models_dir": str(out_dir / bundle / "models"),
            "pretrained_vit": str(vit)}
    run_bundle(bundle, ["train.json", "demo.json"], stage=1, **dirs)
    run_bundle(bundle, ["train.json", "demo.json"], stage=2, **dirs)


def _seg(out_dir: Path) -> None:
    """lamed_seg from stage 2's weights."""
    bundle = _BUNDLES["seg"]
    lamed = out_dir / _BUNDLES["lamed"]
    dirs = {"output_dir": str(out_dir / bundle / "eval"), "models_dir": str(out_dir / bundle / "models"),
            "pretrained_vit": str(out_dir / _BUNDLES["clip"] / "models" / "vision_encoder.safetensors"),
            "init_weights": str(lamed / "models" / "stage2" / "trained.safetensors")}
    run_bundle(bundle, ["train.json", "demo.json"], **dirs)


def _bench(out_dir: Path) -> dict[str, float]:
    """The m3d_bench demo on the demo checkpoints (CLIP for retrieval, LaMed stage 2 for the text tasks, lamed_seg
    for the mask tasks); image-free numbers as ``control/…``."""
    bundle = _BUNDLES["bench"]
    models = {stage: out_dir / _BUNDLES[stage] / "models" for stage in ("clip", "lamed", "seg")}
    run_bundle(bundle, ["evaluate.json", "demo.json"], output_dir=str(out_dir / bundle / "eval"),
               clip_weights=str(models["clip"] / "model.safetensors"),
               demo_vit=str(models["clip"] / "vision_encoder.safetensors"),
               lamed_weights=str(models["lamed"] / "stage2" / "trained.safetensors"),
               seg_weights=str(models["seg"] / "trained.safetensors"))
    results = {}
    for name in ("clip-demo", "lamed-demo", "lamed-demo-image_free", "seg-demo", "seg-demo-image_free"):
        summary = json.loads((out_dir / bundle / "eval" / name / "summary.json").read_text())["metrics"]
        prefix = "control/" if name.endswith("image_free") else ""
        results.update({prefix + key: entry["value"] for key, entry in summary.items()})
    return results


_DEMO_STAGES = {"clip": _clip, "lamed": _lamed, "seg": _seg, "bench": _bench}


def demo_table(results: dict[str, dict]) -> str:
    """A Markdown table of every metric next to its reference point: chance (retrieval) or the image-free control.

    Per-class segmentation scores (``ss/dice/<dataset>/<class>``) stay in the metrics files; the table shows the
    per-dataset ones.
    """
    lines = ["| stage | metric | trained | chance / image-free control |", "|---|---|---|---|"]
    for stage, metrics in results.items():
        for key, value in sorted(metrics.items()):
            if key.startswith("control/") or key.count("/") >= 3:
                continue
            reference = ""
            if key.startswith("itr/") and "_r" in key and "@" in key:
                k, pool = key.rsplit("_r", 1)[1].split("@")
                reference = f"{chance_recall(int(k), int(pool)):.3f}"
            elif f"control/{key}" in metrics:
                reference = f"{metrics[f'control/{key}']:.3f}"
            lines.append(f"| {stage} | {key} | {value:.3f} | {reference} |")
    return "\n".join(lines)
