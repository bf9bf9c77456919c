"""Which LaMed parts train in each stage, LoRA through peft, and the state dict of only the trained weights.

Stage 1 trains the perceiver and the input embeddings (LLM and ViT frozen); stage 2 adds LoRA on every linear layer
of the LLM and trains the ViT, perceiver, embeddings and LM head in full, as in the paper. A checkpoint holds only
the trained tensors, under *canonical* names — peft's ``base_model.model.`` wrapper prefix removed — so stage 1's
export loads into the stage-2 model before or after LoRA is added, and a LoRA checkpoint loads into a fresh wrap.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

__all__ = [
    "LoRASettings",
    "STAGE_PARTS",
    "apply_lora",
    "canonical_name",
    "load_trained_state",
    "prepare_training",
    "set_trainable",
    "trained_state_dict",
]

logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
PARTS = ("vision", "perceiver", "embeddings", "lm_head", "llm", "segmenter")
STAGE_PARTS = {
    1: ("perceiver", "embeddings"),
    2: ("vision", "perceiver", "embeddings", "lm_head"),
}


@dataclass(frozen=True)
class LoRASettings:
    """The paper's LoRA: rank 16, α 32, dropout 0.05 on every linear layer of the LLM (the LM head excluded)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05

    def config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none", task_type="CAUSAL_LM",
            target_modules="all-linear",
        )


def _part_parameters(model: nn.Module, part: str) -> list[nn.Parameter]:
    llm = model.llm
    if part == "vision":
        return list(model.vision_encoder.parameters())
    if part == "perceiver":
        return list(model.perceiver.parameters())
    if part == "embeddings":
        return [llm.get_input_embeddings().weight]
    if part == "lm_head":
        head = llm.get_output_embeddings()
        return [] if head is None else [head.weight]
    if part == "segmenter":
        if not hasattr(model, "segmenter"):
            raise ValueError("'segmenter' is trainable only in a LaMedSeg model")
        return [*model.segmenter.parameters(), *model.seg_projector.parameters()]
    return list(llm.parameters())


def set_trainable(model: nn.Module, parts: tuple[str, ...] | list[str]) -> nn.Module:
    """Freeze everything, then unfreeze the named ``parts`` of a :class:`~m3d_components.models.lamed.LaMed`.

    ``parts`` ⊆ {vision, perceiver, embeddings, lm_head, llm, segmenter (module + ``[SEG]`` projector)}; LoRA
    adapters (if any) stay trainable.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown trainable part(s) {unknown}; expected some of {PARTS}")
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    for part in parts:
        for param in _part_parameters(model, part):
            param.requires_grad_(True)
    return model


def apply_lora(model: nn.Module, settings: LoRASettings | None) -> nn.Module:
    """Wrap ``model.llm`` with LoRA adapters (no-op for None); call :func:`set_trainable` afterwards."""
    if settings is not None and not isinstance(model.llm, PeftModel):
        model.llm = get_peft_model(model.llm, settings.config())
    return model


def canonical_name(name: str) -> str:
    """A parameter name without peft's wrapper prefix (``llm.base_model.model.model.x`` → ``llm.model.x``)."""
    return name.replace(PEFT_PREFIX, "", 1) if PEFT_PREFIX in name else name


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors under canonical names; a tied tensor (shared input/output embedding) appears once.

    Under FSDP the parameters are shards (DTensors): each is gathered whole, a collective that every rank must call.
    """
    state, seen = {}, set()
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            value = param.detach()
            state[canonical_name(name)] = value.full_tensor() if isinstance(value, DTensor) else value
    return state


def load_trained_state(
    model: nn.Module, source: str | os.PathLike | dict[str, torch.Tensor], strict: bool = True
) -> list[str]:
    """Copy a :func:`trained_state_dict` (or its safetensors file) into ``model``.

    Every tensor in ``source`` must find a parameter of the same canonical name and shape; with ``strict`` every
    currently trainable parameter must also be covered (a resume that silently skipped a part would train from a
    random start). Returns the names loaded.

    Raises:
        ValueError: listing unknown names, shape mismatches and (strict) uncovered trainable parameters.
    """
    state = load_file(str(source)) if isinstance(source, (str, os.PathLike)) else source
    params = {canonical_name(n): p for n, p in model.named_parameters()}
    unknown = sorted(k for k in state if k not in params)
    mismatched = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(params[k].shape)}"
        for k, v in state.items() if k in params and v.shape != params[k].shape
    )
    uncovered = sorted(k for k, p in params.items() if p.requires_grad and k not in state) if strict else []
    if unknown or mismatched or uncovered:
        raise ValueError(
            f"trained weights from {source if isinstance(source, (str, os.PathLike)) else 'state dict'} do not fit "
            f"the model: unknown {unknown[:5]}, shape mismatch {mismatched[:5]}, trainable but missing {uncovered[:5]}"
        )
    with torch.no_grad():
        for key, value in state.items():
            param = params[key]
            value = value.to(device=param.device, dtype=param.dtype)
            if isinstance(param, DTensor):  # an FSDP shard: keep this rank's part of the whole tensor
                value = distribute_tensor(value, param.device_mesh, param.placements)
            param.copy_(value)
    logger.info("loaded %d trained tensors", len(state))
    return sorted(state)


def prepare_training(
    model: nn.Module,
    parts: tuple[str, ...] | list[str],
    lora: LoRASettings | None = None,
    init_weights: str | os.PathLike | None = None,
) -> nn.Module:
    """Set a LaMed model up for one stage: load an earlier stage's trained weights, add LoRA, choose what trains.

    ``init_weights`` (e.g. stage 1's ``trained.safetensors``: perceiver + embeddings) must fit by name and shape —
    the published code silently dropped stage 1's embeddings here. It is loaded before LoRA is added, or after when
    it holds LoRA tensors itself (stage 2's export continued by lamed_seg, whose adapters keep training). Trained
    parameters are kept in float32 even when the frozen LLM weights are bfloat16.
    """
    state = load_file(str(init_weights)) if init_weights else {}
    if any("lora_" in k for k in state):
        if lora is None:
            raise ValueError(f"{init_weights} holds LoRA adapters: continue it with LoRA enabled (same r and alpha)")
        apply_lora(model, lora)
    if state:
        load_trained_state(model, state, strict=False)
        logger.info("initialised from %s", init_weights)
    apply_lora(model, lora)
    set_trainable(model, parts)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model
