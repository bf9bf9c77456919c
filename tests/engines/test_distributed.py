"""Two-process gloo tests of data-parallel (DDP) and sharded (FSDP) LaMed training on CPU: one step on half a batch
per rank gives the parameters of one step on the whole batch in one process, replicas stay equal, and
``ReplicaSyncCheck`` names a parameter that drifted on one rank."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine

from m3d_components.engines.distributed import ReplicaSyncCheck, fsdp_resume_disabled, shard_lamed
from m3d_components.models.compiled import compile_blocks
from m3d_components.models.trainable import STAGE_PARTS, LoRASettings, prepare_training, trained_state_dict
from tests.conftest import N_IMAGE_TOKENS, VIT, free_port, tiny_lamed

BATCH, TEXT = 4, 12


def _stage2(llm_dir: str) -> torch.nn.Module:
    model, _ = tiny_lamed(llm_dir)
    prepare_training(model, STAGE_PARTS[2], LoRASettings())
    return model.eval()  # no LoRA dropout: both runs must see the same function


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Equal-length rows with the same number of label tokens, so the mean of the ranks' mean losses is the
    whole batch's mean loss."""
    generator = torch.Generator().manual_seed(7)
    image = torch.randn(BATCH, 1, *VIT.img_size, generator=generator)
    text = torch.randint(3, 200, (BATCH, TEXT), generator=generator)
    input_ids = torch.cat([torch.full((BATCH, N_IMAGE_TOKENS), model.image_token_id), text], dim=1)
    labels = input_ids.masked_fill(input_ids == model.image_token_id, -100)
    return {"image": image, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def _sgd_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """SGD rather than AdamW: its update is proportional to the gradient, so rounding differences stay rounding."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**batch)["loss"].backward()
    optimizer.step()


def _worker(rank: int, world: int, port: int, llm_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for mode in ("ddp", "fsdp"):
            _check_one_step(rank, world, llm_dir, mode)
    finally:
        dist.destroy_process_group()


def _check_one_step(rank: int, world: int, llm_dir: str, mode: str) -> None:
    model = _stage2(llm_dir)
    reference = copy.deepcopy(model)
    before = trained_state_dict(copy.deepcopy(model))
    batch = _batch(model)
    half = BATCH // world
    local = {k: v[rank * half:(rank + 1) * half] for k, v in batch.items()}
    wrapped = (torch.nn.parallel.DistributedDataParallel(model) if mode == "ddp"
               else shard_lamed(model, torch.device("cpu")))
    _sgd_step(wrapped, local)
    _sgd_step(reference, batch)

    got = trained_state_dict(model)  # FSDP: every shard gathered whole
    want = trained_state_dict(reference)
    assert got.keys() == want.keys() and any("lora_B" in k for k in got)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(want[k], before[k]) for k in want), "the step changed no trained weight"

    engine = Engine(lambda e, b: None)
    engine.state.iteration = 1
    ReplicaSyncCheck(wrapped)(engine)  # equal replicas pass
    if mode == "ddp":
        target = next(p for n, p in model.named_parameters() if "perceiver" in n and p.requires_grad)
        if rank == 1:
            with torch.no_grad():
                target.add_(1e-3)
        with pytest.raises(RuntimeError, match=r"replicas diverged at iteration 1: parameter '.*perceiver.*'.*\[1\]"):
            ReplicaSyncCheck(wrapped)(engine)


def test_two_process_step_equals_one_process_step_and_replicas_stay_equal(llama_dir):
    """DDP, then FSDP, in the same two processes (one start-up for both)."""
    mp.spawn(_worker, args=(2, free_port(), str(llama_dir)), nprocs=2, join=True)


def test_sync_check_is_a_no_op_in_one_process(llama_dir):
    engine = Engine(lambda e, b: None)
    engine.state.iteration = 1
    ReplicaSyncCheck(_stage2(str(llama_dir)))(engine)
    with pytest.raises(ValueError, match="interval"):
        ReplicaSyncCheck(torch.nn.Linear(1, 1), interval=-1)


def test_fsdp_refuses_a_resume_with_a_clear_error():
    assert fsdp_resume_disabled(False) is True
    with pytest.raises(ValueError, match="resume is not supported with fsdp_train.json"):
        fsdp_resume_disabled(True)


def test_fsdp_refuses_compiled_blocks_with_a_clear_error(llama_dir):
    model = compile_blocks(_stage2(str(llama_dir)))
    with pytest.raises(ValueError, match="compile_blocks is not supported with fsdp_train.json"):
        shard_lamed(model, torch.device("cpu"))
