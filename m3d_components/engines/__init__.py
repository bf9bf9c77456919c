"""Engines: MONAI/Ignite glue that wires data, models and metrics into training, evaluation and inference."""

from m3d_components.engines import (
    batch,
    bench,
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
    "bench",
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
