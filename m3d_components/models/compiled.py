"""Regional compilation: ``torch.compile`` each transformer block in place rather than the whole model.

Compiling the repeated blocks (the ViT's, the LLM's decoder layers, the text encoder's layers) gets most of what a
whole-model compile gives — fused norms, activations and residual adds around the attention and matmul kernels — while
compiling one block's code once for all its copies, keeping the LaMed splice, the Ignite loop and Hugging Face's
generation eager (no graph breaks to chase), and leaving parameter names unchanged, so checkpoints, LoRA export and
DDP see the same model.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from m3d_components.models.vision import ViTBlock

logger = logging.getLogger(__name__)

__all__ = ["block_classes", "compile_blocks", "compiled_blocks"]


def block_classes(model: nn.Module) -> set[str]:
    """Names of the block classes to compile in ``model``: the ViT's :class:`ViTBlock` and every class a Hugging Face
    model inside it declares as a unit (``_no_split_modules``, e.g. ``LlamaDecoderLayer``, ``BertLayer``)."""
    names = {ViTBlock.__name__}
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names.update(module._no_split_modules or ())
    return names


def compile_blocks(model: nn.Module, enabled: bool = True, **options: Any) -> nn.Module:
    """Compile every block of :func:`block_classes` in ``model`` in place (``nn.Module.compile(**options)``).

    ``enabled=False`` returns ``model`` untouched, so a config can pass its ``compile_blocks`` setting straight in.
    The first steps pay the compilation (tens of seconds per block class on a GPU); sequence lengths that change from
    batch to batch are then compiled once as dynamic shapes.

    Raises:
        ValueError: when ``model`` holds no block to compile.
    """
    if not enabled:
        return model
    names = block_classes(model)
    compiled: Counter[str] = Counter()
    for module in model.modules():
        if type(module).__name__ in names:
            module.compile(**options)
            compiled[type(module).__name__] += 1
    if not compiled:
        raise ValueError(f"{type(model).__name__} has no transformer block to compile (looked for {sorted(names)})")
    logger.info("compiled %s", ", ".join(f"{n} {name}" for name, n in sorted(compiled.items())))
    return model


def compiled_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the modules of ``model`` that :func:`compile_blocks` compiled."""
    return [name for name, module in model.named_modules() if getattr(module, "_compiled_call_impl", None) is not None]
