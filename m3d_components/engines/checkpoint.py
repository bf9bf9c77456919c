"""Checkpoints: resumable training state (torch, loaded with ``weights_only=True``) and weights as safetensors.

A resume checkpoint is MONAI's ``CheckpointSaver`` output (written atomically by Ignite) holding network, optimizer,
scheduler, trainer counters and :class:`RNGState`, so a killed run continues where it stopped. Weights for use
elsewhere (best model, exported encoders) are safetensors files written atomically by :func:`save_safetensors`.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from safetensors.torch import load_file, save_file
from torch import nn

from m3d_components.models.trainable import load_trained_state, trained_state_dict
from m3d_components.models.vision import load_vit_weights

__all__ = [
    "RNGState",
    "WeightsExporter",
    "attach",
    "latest_checkpoint",
    "load_pretrained",
    "load_safetensors",
    "load_weights",
    "save_safetensors",
]

logger = logging.getLogger(__name__)


class RNGState:
    """Python, NumPy and torch random states as a checkpointable object (tensors and ints only)."""

    def state_dict(self) -> dict:
        version, state, gauss = random.getstate()
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "python": torch.tensor(state, dtype=torch.int64),
            "python_version": version,
            "python_gauss": -1.0 if gauss is None else gauss,
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_has_gauss": int(np_state[3]),
            "numpy_gauss": float(np_state[4]),
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        gauss = None if state["python_gauss"] == -1.0 else state["python_gauss"]
        random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), gauss))
        np.random.set_state(
            ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], state["numpy_has_gauss"],
             state["numpy_gauss"])
        )


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "resume") -> str | None:
    """The most recently written ``<prefix>*.pt`` in ``ckpt_dir`` (interval or final/exception save); None if none.

    Modification time decides, because a final checkpoint saved when an earlier run crashed can be older than the
    interval checkpoints of the run that resumed from it.
    """
    paths = list(Path(ckpt_dir).glob(f"{prefix}*.pt"))
    return str(max(paths, key=lambda p: p.stat().st_mtime_ns)) if paths else None


def load_pretrained(module: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """Load a released or exported ViT checkpoint into ``module`` (a ``VisionTransformer3D``); no-op for None."""
    if path:
        load_vit_weights(module, path)
        logger.info("loaded vision encoder weights from %s", path)
    return module


def attach(engine: Engine, *handlers) -> None:
    """Attach handlers that need the engine itself in their config (a resume loader/saver holding the trainer
    state would otherwise be a circular reference); disabled (None) entries are skipped."""
    for handler in handlers:
        if handler is not None:
            handler.attach(engine)


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a state dict as safetensors via a temporary file and an atomic rename (no half-written weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_file(str(path))


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a safetensors state dict (e.g. the best ``model.safetensors``) into ``model``; errors list bad keys."""
    state = load_safetensors(path)
    missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path} does not fit the model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    logger.info("loaded weights from %s", path)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class TrainedWeights:
    """The trained tensors of a model as a checkpointable object (``state_dict``/``load_state_dict``).

    A resume checkpoint of a LoRA run then holds LoRA, perceiver and the unfrozen parts — megabytes instead of the
    whole frozen LLM — and loading checks every trainable tensor is there (see
    :func:`~m3d_components.models.trainable.load_trained_state`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trained_state_dict(_unwrap(self.model))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trained_state(_unwrap(self.model), state)


class WeightsExporter:
    """Save a model (or one of its submodules) as safetensors when an engine event fires.

    Attach to the evaluator with ``best_only=True`` to keep the weights of the best key metric (MONAI's evaluator
    records ``state.best_metric_epoch``), or to the trainer for a final export at ``Events.COMPLETED``.

    Args:
        model: the network (DDP-wrapped is fine; FSDP-sharded with ``trained_only``, in which case attach it on
            every rank: the shards are gathered by all, the file written by rank 0).
        path: the output ``.safetensors`` file.
        submodule: attribute path of the part to export, e.g. ``"vision_encoder"``; None exports the whole model.
        best_only: on the evaluator, save only when this epoch set a new best key metric.
        trained_only: export only the trainable tensors (LaMed: LoRA, perceiver, unfrozen parts), canonical names.
        event: the event to save at (default: EPOCH_COMPLETED with ``best_only``, else COMPLETED).
    """

    def __init__(
        self, model: nn.Module, path: str | os.PathLike, submodule: str | None = None, best_only: bool = False,
        event: Events | None = None, trained_only: bool = False,
    ) -> None:
        self.model = model
        self.trained_only = trained_only
        self.path = Path(path)
        self.submodule = submodule
        self.best_only = best_only
        self.event = event or (Events.EPOCH_COMPLETED if best_only else Events.COMPLETED)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def module(self) -> nn.Module:
        module = _unwrap(self.model)
        return module.get_submodule(self.submodule) if self.submodule else module

    def __call__(self, engine: Engine) -> None:
        if self.best_only and getattr(engine.state, "best_metric_epoch", None) != engine.state.epoch:
            return
        module = self.module()
        state = trained_state_dict(module) if self.trained_only else module.state_dict()  # FSDP: gathered on all ranks
        if idist.get_rank() == 0:
            save_safetensors(state, self.path)
            logger.info("saved %s weights to %s", self.submodule or "model", self.path)
