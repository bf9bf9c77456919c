"""Multi-process training helpers: a check that data-parallel replicas hold the same weights, and FSDP sharding.

DDP keeps replicas equal only while every rank runs the same optimizer steps on all-reduced gradients; a rank that
skips a step (an exception swallowed by a handler, a parameter unused on one rank only, a non-deterministic op in the
update) drifts silently and the exported rank-0 weights no longer describe what was trained. ``ReplicaSyncCheck``
turns that into a clear error. ``shard_lamed`` is the FSDP option for LLMs that do not fit one GPU.
"""

from __future__ import annotations

import logging

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.distributed.tensor import DTensor

from m3d_components.models.compiled import compiled_blocks

__all__ = ["ReplicaSyncCheck", "fsdp_resume_disabled", "parameter_fingerprint", "shard_lamed"]

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def parameter_fingerprint(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """Names of the trained parameters and a float64 (P, 3) fingerprint of each: sum, sum of squares, and a sum
    weighted by position, so that equal replicas give bit-equal rows and a moved or changed value shows."""
    names, rows = [], []
    for name, param in _unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        values = param.detach()
        if isinstance(values, DTensor):  # an FSDP shard: compare the whole parameter (a collective)
            values = values.full_tensor()
        values = values.reshape(-1).double()
        weights = torch.linspace(1.0, 2.0, values.numel(), dtype=torch.float64, device=values.device)
        rows.append(torch.stack([values.sum(), values.square().sum(), (values * weights).sum()]))
        names.append(name)
    if not rows:
        return names, torch.zeros(0, 3, dtype=torch.float64)
    return names, torch.stack(rows)


class ReplicaSyncCheck:
    """Ignite handler: every ``interval`` iterations and when training ends, compare the trained parameters of all
    ranks and raise naming the first one that differs. A no-op in a single process.

    The cost is one all-gather of three numbers per trained tensor, so an interval of a few hundred steps is free.

    Args:
        model: the (DDP-wrapped) network.
        interval: iterations between checks; 0 checks only at the end.
    """

    def __init__(self, model: nn.Module, interval: int = 100) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}")
        self.model = model
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        if self.interval:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        world = idist.get_world_size()
        if world < 2:
            return
        names, local = parameter_fingerprint(self.model)
        device = idist.device()
        gathered = idist.all_gather(local.to(device)).cpu().reshape(world, len(names), 3)
        differs = (gathered != gathered[0]).any(dim=2).any(dim=0)
        if bool(differs.any()):
            index = int(differs.nonzero()[0])
            ranks = [r for r in range(world) if not torch.equal(gathered[r, index], gathered[0, index])]
            raise RuntimeError(
                f"replicas diverged at iteration {engine.state.iteration}: parameter {names[index]!r} differs "
                f"between rank 0 and rank(s) {ranks} ({int(differs.sum())} of {len(names)} trained tensors differ)"
            )
        logger.info("replicas in sync: %d trained tensors equal on %d ranks at iteration %d",
                    len(names), world, engine.state.iteration)


def shard_lamed(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard a LaMed for training with FSDP2 (``fully_shard``): each LLM decoder layer is its own unit, the rest
    (ViT, perceiver, embeddings, LM head, segmenter) the root, so each rank keeps 1/world of the weights, gradients
    and optimizer state and gathers one layer at a time. Frozen and trained (LoRA) parameters may share a unit.

    Call after ``prepare_training`` (LoRA added, trainable parts chosen) and before the optimizer is built.
    """
    from torch.distributed.fsdp import fully_shard

    if compiled_blocks(model):
        raise ValueError("compile_blocks is not supported with fsdp_train.json: pass --compile_blocks False "
                         "(or train with train.json or multi_gpu_train.json)")
    model = model.to(device)
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(llm).__name__} has no model.layers: FSDP sharding needs a decoder-layer stack")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def fsdp_resume_disabled(resume: bool) -> bool:
    """``fsdp_train.json``'s value for the resume loader's ``_disabled_``: always True, and an error when the user
    asked for a resume — under FSDP the optimizer state is sharded and the resume checkpoint is not written."""
    if resume:
        raise ValueError(
            "resume is not supported with fsdp_train.json (the optimizer state is sharded across ranks): "
            "pass --resume False to start from init_weights, or train with multi_gpu_train.json (DDP) to resume"
        )
    return True
