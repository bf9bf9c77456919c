"""Engines: MONAI/Ignite glue that wires data, models and metrics into training, evaluation and inference.

Submodules load on first use (:mod:`m3d_components._lazy`)."""

from m3d_components._lazy import lazy_submodules

__all__ = [
    "batch", "bench", "checkpoint", "collate", "demo", "distributed", "embeddings", "generate", "infer", "instruct",
    "merge", "monailabel", "optim", "paths", "pipeline", "reports", "retrieval", "seg_pretrain", "settings", "speed",
    "tracking",
]
__getattr__, __dir__ = lazy_submodules(__name__, __all__)
