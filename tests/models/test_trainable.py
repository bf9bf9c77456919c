"""Stage set-up: what trains in stage 1 and 2, LoRA on every LLM linear, trained-only state and the stage hand-off."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from peft import PeftModel

from m3d_components.engines.checkpoint import save_safetensors
from m3d_components.models.trainable import (
    STAGE_PARTS,
    LoRASettings,
    load_trained_state,
    prepare_training,
    trained_state_dict,
)
from tests.conftest import tiny_lamed

pytestmark = pytest.mark.usefixtures("no_network")


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_stage1_trains_perceiver_and_embeddings_only(llama_dir):
    model, _ = tiny_lamed(llama_dir)
    prepare_training(model, STAGE_PARTS[1])
    names = _trainable_names(model)
    assert names == {n for n, _ in model.named_parameters() if n.startswith("perceiver.")} | {
        "llm.model.embed_tokens.weight"
    }


def test_stage2_lora_on_every_llm_linear_plus_full_parts(llama_dir):
    model, _ = tiny_lamed(llama_dir)
    prepare_training(model, STAGE_PARTS[2], LoRASettings())
    assert isinstance(model.llm, PeftModel)
    config = model.llm.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    names = _trainable_names(model)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in names if ".lora_A." in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head.lora" in n for n in names)
    assert any(n.startswith("vision_encoder.") for n in names)
    assert {"llm.base_model.model.model.embed_tokens.weight", "llm.base_model.model.lm_head.weight"} <= names
    frozen_base = [n for n, p in model.named_parameters() if "q_proj.base_layer" in n]
    assert frozen_base and not any(n in names for n in frozen_base)


def test_trained_state_uses_canonical_names_and_round_trips(llama_dir, tmp_path):
    model, _ = tiny_lamed(llama_dir)
    prepare_training(model, STAGE_PARTS[2], LoRASettings())
    state = trained_state_dict(model)
    assert not any("base_model.model." in k for k in state)
    assert "llm.model.layers.0.self_attn.q_proj.lora_A.default.weight" in state
    path = save_safetensors({k: v + 1 for k, v in state.items()}, tmp_path / "trained.safetensors")
    other, _ = tiny_lamed(llama_dir)
    prepare_training(other, STAGE_PARTS[2], LoRASettings())
    load_trained_state(other, path)
    for key, value in trained_state_dict(other).items():
        torch.testing.assert_close(value, state[key] + 1)


def test_stage2_starts_from_stage1_perceiver_and_embeddings(llama_dir, tmp_path):
    """The published stage 2 silently dropped stage 1's embeddings; here both parts must arrive."""
    stage1, _ = tiny_lamed(llama_dir)
    prepare_training(stage1, STAGE_PARTS[1])
    with torch.no_grad():
        for param in stage1.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))  # "training"
    path = save_safetensors(trained_state_dict(stage1), tmp_path / "stage1.safetensors")

    stage2, _ = tiny_lamed(llama_dir)
    prepare_training(stage2, STAGE_PARTS[2], LoRASettings(), init_weights=path)
    torch.testing.assert_close(
        stage2.llm.get_input_embeddings().weight, stage1.llm.get_input_embeddings().weight
    )
    for (name, a), (_, b) in zip(stage2.perceiver.named_parameters(), stage1.perceiver.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_mismatched_weights_are_refused_with_names(llama_dir, tmp_path):
    model, _ = tiny_lamed(llama_dir)
    prepare_training(model, STAGE_PARTS[1])
    state = trained_state_dict(model)
    state["perceiver.projector.0.weight"] = torch.zeros(3, 3)
    state["nonsense.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown \\['nonsense.weight'\\].*perceiver.projector.0.weight: file \\(3, 3\\)"):
        load_trained_state(model, state)
    with pytest.raises(ValueError, match="trainable but missing .*embed_tokens"):
        load_trained_state(model, {k: v for k, v in trained_state_dict(model).items() if "embed" not in k})


def test_unknown_part_is_refused(llama_dir):
    model, _ = tiny_lamed(llama_dir)
    with pytest.raises(ValueError, match="unknown trainable part"):
        prepare_training(model, ("perceiver", "decoder"))
