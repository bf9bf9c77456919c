"""Engines: MONAI/Ignite glue that wires data, models and metrics into training, evaluation and inference."""

from m3d_components.engines import (
    batch,
    checkpoint,
    collate,
    demo,
    embeddings,
    infer,
    instruct,
    merge,
    optim,
    paths,
    pipeline,
    reports,
    retrieval,
    settings,
    tracking,
)

__all__ = [
    "batch",
    "checkpoint",
    "collate",
    "demo",
    "embeddings",
    "infer",
    "instruct",
    "merge",
    "optim",
    "paths",
    "pipeline",
    "reports",
    "retrieval",
    "settings",
    "tracking",
]
