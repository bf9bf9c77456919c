"""Regional compilation: which blocks compile, that names stay, and that a compiled stage-2 step equals the eager one.

The step compiles with the ``aot_eager`` backend: TorchDynamo's capture and AOTAutograd's joint forward/backward graph
of each block, as on a GPU, without inductor's code generation, which on a 2-core CPU would take a minute and would
test the C++ backend that a GPU run never uses."""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from m3d_components.models.compiled import block_classes, compile_blocks, compiled_blocks
from m3d_components.models.trainable import STAGE_PARTS, LoRASettings, prepare_training
from tests.conftest import N_IMAGE_TOKENS, VIT, tiny_lamed

pytestmark = pytest.mark.usefixtures("no_network")


def _batch(model, tokenizer):
    torch.manual_seed(1)
    text = tokenizer(["Which plane? Axial.", "Where is the liver? [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]."],
                     padding="longest", return_tensors="pt")
    image_ids = torch.full((2, N_IMAGE_TOKENS), model.image_token_id)
    input_ids = torch.cat([image_ids, text["input_ids"]], 1)
    attention_mask = torch.cat([torch.ones_like(image_ids), text["attention_mask"]], 1)
    labels = input_ids.masked_fill((input_ids == model.image_token_id) | (attention_mask == 0), -100)
    return {"image": torch.randn(2, 1, *VIT.img_size), "input_ids": input_ids, "attention_mask": attention_mask,
            "labels": labels}


def test_compiled_stage2_step_equals_the_eager_one_and_keeps_parameter_names(llama_dir):
    eager, tokenizer = tiny_lamed(llama_dir)
    prepare_training(eager, STAGE_PARTS[2], LoRASettings(dropout=0.0))
    eager.train()
    compiled = compile_blocks(copy.deepcopy(eager), backend="aot_eager")
    assert block_classes(compiled) == {"ViTBlock", "LlamaDecoderLayer"}
    names = compiled_blocks(compiled)
    vit_blocks = [n for n in names if n.startswith("vision_encoder.")]
    llm_layers = [n for n in names if n.startswith("llm.")]
    assert len(vit_blocks) == VIT.num_layers and len(llm_layers) == 2 and len(names) == 3, names
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and LoRA export see the same names

    batch = _batch(eager, tokenizer)
    losses = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        losses[name] = model(**batch)["loss"]
        losses[name].backward()
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-4, atol=1e-5)
    grads = {n: p.grad for n, p in compiled.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in grads) and all(g is not None for g in grads.values())
    for name, param in eager.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_disabled_is_a_no_op_and_a_model_without_blocks_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert compile_blocks(model, False) is model and compiled_blocks(model) == []
    with pytest.raises(ValueError, match="Sequential has no transformer block to compile"):
        compile_blocks(model)
