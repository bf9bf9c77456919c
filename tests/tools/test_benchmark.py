"""Tests for tools/benchmark.py: the harness runs both CLIP configurations and reports every field.

Nothing here times anything worth reading: speeds are measured by the benchmark script, never asserted by tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from m3d_components.models.vision import ViTConfig, VisionTransformer3D

BENCHMARK_PATH = Path(__file__).resolve().parents[2] / "tools" / "benchmark.py"
FIGURES = ("samples_per_s", "step_ms_median", "step_ms_p10", "step_ms_p90", "peak_memory_gib", "flops_per_step")


@pytest.fixture(scope="module")
def bench():
    """tools/ is not a package; load the script as a module by path."""
    spec = importlib.util.spec_from_file_location("m3d_tools_benchmark", BENCHMARK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tiny_clip_stage_runs_both_configurations(bench):
    rows = bench.run_benchmark(["clip"], "tiny", steps=2, warmup=1)
    assert [(r["stage"], r["configuration"], r["batch"], r["status"]) for r in rows] == [
        ("clip", "optimized", 32, "ok"),
        ("clip", "reference", 32, "ok"),
    ]
    for row in rows:
        assert all(isinstance(row[key], float) and row[key] > 0 for key in FIGURES), row
        assert row["step_ms_p10"] <= row["step_ms_median"] <= row["step_ms_p90"]
        assert row["memory_kind"] == "process max RSS" and row["mfu"] is None  # CPU: no MFU
        assert isinstance(row["ratio"], float)
    assert rows[1]["ratio"] == 1.0
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"]  # same model, other kernels
    table = bench.markdown_table(rows)
    assert "| clip | optimized | 32 |" in table and "| clip | reference | 32 |" in table


def test_out_of_memory_falls_back_to_the_next_batch(bench):
    def build(batch):
        if batch == 32:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return (lambda: None), 1.0

    harness = bench.Harness(torch.device("cpu"), steps=2, warmup=0)
    rows = harness.measure_first_fitting("reference", (32, 16), build)
    assert [(r["batch"], r["status"]) for r in rows] == [(32, "out of memory"), (16, "ok")]
    assert rows[0].keys() == rows[1].keys() and rows[0]["samples_per_s"] is None
    assert rows[1]["note"] == "batch 32 ran out of memory"


def test_vit_flops_match_torch_flop_counter(bench):
    """The analytic 6·N·T + 12·L·T²·d equals what torch counts for forward + backward of the eager ViT."""
    config = ViTConfig(img_size=(8, 32, 32), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_layers=2,
                       num_heads=4, attention="eager")
    encoder = VisionTransformer3D(config)
    image = torch.randn(3, 1, 8, 32, 32, requires_grad=True)  # so the patch embedding's input gradient counts too
    with FlopCounterMode(display=False) as counter:
        encoder(image).sum().backward()
    assert counter.get_total_flops() == pytest.approx(3 * bench.vit_train_flops(encoder), rel=1e-6)


def test_unknown_stage_scale_or_steps_are_rejected(bench):
    with pytest.raises(ValueError, match="unknown stage"):
        bench.run_benchmark(["lamed"], "tiny")
    with pytest.raises(ValueError, match="unknown scale"):
        bench.run_benchmark(["clip"], "huge")
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.run_benchmark(["clip"], "tiny", steps=0)


def test_bf16_peak_measurement_runs(bench):
    """The GPU's MFU denominator; here only its code path, on CPU and at a toy size."""
    assert bench.measure_bf16_peak(torch.device("cpu"), size=64, runs=2, matmuls=2) > 0


def test_tiny_generate_stage_compares_one_batch_with_one_prompt_at_a_time(bench):
    rows = bench.run_benchmark(["generate"], "tiny", steps=1, warmup=0)
    assert [(r["configuration"], r["batch"], r["status"]) for r in rows] == [
        ("optimized", 32, "ok"), ("reference", 32, "ok")]
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] and rows[1]["ratio"] == 1.0
    assert "32 new tokens" in rows[0]["note"]
