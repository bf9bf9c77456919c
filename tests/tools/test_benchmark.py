"""Tests for the speed benchmark (``m3d_components.engines.speed``, run as ``tools/benchmark.py`` or
``m3d bench-speed``): every stage runs both configurations and reports every field; the analytic FLOPs equal what
torch counts.

Nothing here times anything worth reading: speeds are measured by the benchmark script, never asserted by tests.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from m3d_components.engines import speed as bench
from m3d_components.models.compiled import compiled_blocks
from m3d_components.models.vision import ViTConfig, VisionTransformer3D

FIGURES = ("samples_per_s", "step_ms_median", "step_ms_p10", "step_ms_p90", "peak_memory_gib", "flops_per_step")
ROOT = Path(__file__).resolve().parents[2]


def test_tiny_clip_stage_runs_both_configurations():
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


def test_out_of_memory_falls_back_to_the_next_batch():
    def build(batch):
        if batch == 32:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return (lambda: None), 1.0

    harness = bench.Harness(torch.device("cpu"), steps=2, warmup=0)
    rows = harness.measure_first_fitting("reference", (32, 16), build)
    assert [(r["batch"], r["status"]) for r in rows] == [(32, "out of memory"), (16, "ok")]
    assert rows[0].keys() == rows[1].keys() and rows[0]["samples_per_s"] is None
    assert rows[1]["note"] == "batch 32 ran out of memory"


def test_vit_flops_match_torch_flop_counter():
    """The analytic 6·N·T + 12·L·T²·d equals what torch counts for forward + backward of the eager ViT."""
    config = ViTConfig(img_size=(8, 32, 32), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_layers=2,
                       num_heads=4, attention="eager")
    encoder = VisionTransformer3D(config)
    image = torch.randn(3, 1, 8, 32, 32, requires_grad=True)  # so the patch embedding's input gradient counts too
    with FlopCounterMode(display=False) as counter:
        encoder(image).sum().backward()
    assert counter.get_total_flops() == pytest.approx(3 * bench.vit_train_flops(encoder, image_grad=True), rel=1e-6)


def test_unknown_stage_scale_or_steps_are_rejected():
    with pytest.raises(ValueError, match="unknown stage"):
        bench.run_benchmark(["bogus"], "tiny")
    with pytest.raises(ValueError, match="unknown scale"):
        bench.run_benchmark(["clip"], "huge")
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.run_benchmark(["clip"], "tiny", steps=0)


def test_bf16_peak_measurement_runs():
    """The GPU's MFU denominator; here only its code path, on CPU and at a toy size."""
    assert bench.measure_bf16_peak(torch.device("cpu"), size=64, runs=2, matmuls=2) > 0


def test_tiny_generate_stage_compares_one_batch_with_one_prompt_at_a_time():
    rows = bench.run_benchmark(["generate"], "tiny", steps=1, warmup=0)
    assert [(r["configuration"], r["batch"], r["status"]) for r in rows] == [
        ("optimized", 32, "ok"), ("optimized + static cache", 32, "ok"), ("reference", 32, "ok")]
    assert rows[0]["flops_per_step"] == rows[2]["flops_per_step"] and rows[2]["ratio"] == 1.0
    assert "32 new tokens" in rows[0]["note"] and "32 new tokens" in rows[1]["note"]


@pytest.mark.parametrize("stage", ["lamed", "seg"])
def test_tiny_training_stages_run_the_projects_models_in_both_configurations(stage):
    rows = bench.run_benchmark([stage], "tiny", steps=1, warmup=1)
    assert [(r["stage"], r["configuration"], r["batch"], r["status"]) for r in rows] == [
        (stage, "optimized", 8, "ok"), (stage, "reference", 8, "ok")]
    for row in rows:
        assert all(isinstance(row[key], float) and row[key] > 0 for key in FIGURES), row
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] and rows[1]["ratio"] == 1.0


@pytest.mark.parametrize("seg", [False, True])
def test_lamed_step_trains_the_stage_2_parts_and_its_flops_match_torch(seg):
    """Stage 2 as the bundles set it up (LoRA on every LLM linear, ViT / perceiver / embeddings / LM head trained,
    LLM base weights frozen), and the analytic FLOPs of one step equal torch's count on the eager model (the
    segmenter's share is an estimate, so only the language side is checked exactly)."""
    scale = replace(bench.LAMED_SCALES["tiny"], tokens=40)
    setup = bench.LAMED_SETUPS[-1]  # reference, eager attention: every attention matmul is a counted aten op
    model = bench._lamed_train_model(scale, setup, torch.device("cpu"), seg=seg)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trained) and any(n.startswith("vision_encoder.") for n in trained)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in trained)
    assert any(n.startswith("segmenter.") for n in trained) == seg
    inputs = bench._lamed_inputs(model, scale, 2, seg=False)
    model.eval()  # LoRA dropout off; the FLOPs are the same
    with FlopCounterMode(display=False) as counter:
        model(**inputs)["loss"].backward()
    supervised = scale.tokens - model.num_image_tokens  # the LM head runs where the next token is labelled
    expected = 2 * bench.lamed_train_flops(model, scale.tokens, supervised)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-6)


def test_bench_speed_command_prints_the_table_and_writes_json(tmp_path, capsys):
    """``m3d bench-speed`` and ``tools/benchmark.py`` both call ``main`` with these arguments."""
    out = tmp_path / "speed.json"
    bench.main(["--stages", "lamed", "--steps", "1", "--warmup", "0", "--json", str(out)])
    assert "| lamed | optimized | 8 |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["results"][0]["stage"] == "lamed" and "torch" in report["versions"]
    assert "from m3d_components.engines.speed import main" in (ROOT / "tools" / "benchmark.py").read_text()


def test_loader_stage_reads_every_cache_dtype_through_the_augmentation():
    rows = bench.run_benchmark(["loader"], "tiny", steps=2, warmup=1)
    assert [r["configuration"] for r in rows] == [
        "reference", "float32 cache", "float16 cache", "uint8 cache", "float16 cache, augmentation on device"
    ]
    assert all(r["status"] == "ok" and r["samples_per_s"] > 0 and r["batch"] == 8 for r in rows)
    assert "main process" in rows[0]["note"] and "volumes/s per process" in rows[3]["note"]
    assert "includes apply_augmentation of the batch on cpu" in rows[-1]["note"]
    assert rows[0]["ratio"] == 1.0 and rows[0]["mfu"] is None


def test_compiled_blocks_configuration_is_timed_only_when_asked_for():
    """``--compile-blocks`` adds the optimized step with every ViT block and LLM decoder layer compiled in place (the
    compilation itself is tested in tests/models/test_compiled.py)."""
    cpu = torch.device("cpu")
    names = [s.name for s in bench.Harness(cpu, steps=1, warmup=0).setups(bench.LAMED_SETUPS)]
    assert names == ["optimized", "reference"]
    setups = bench.Harness(cpu, steps=1, warmup=0, compile_blocks=True).setups(bench.LAMED_SETUPS)
    assert [s.name for s in setups] == ["optimized", "optimized + compiled blocks", "reference"]
    scale = bench.LAMED_SCALES["tiny"]
    model = bench._lamed_train_model(scale, setups[1], cpu, seg=False)
    compiled = compiled_blocks(model)
    assert len(compiled) == scale.vit.num_layers + scale.llm["num_hidden_layers"], compiled
    assert compiled_blocks(bench._lamed_train_model(scale, setups[0], cpu, seg=False)) == []
