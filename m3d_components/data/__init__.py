"""Data: readers of the published M3D formats, prompts, transforms, own-scan ingestion and the demo corpus."""

from m3d_components.data import (
    boxes,
    cap,
    errors,
    ingest,
    instruct,
    masks,
    mixture,
    prompts,
    refseg,
    report,
    seg,
    tokens,
    transforms,
    validate,
    volume,
    vqa,
)

__all__ = [
    "boxes", "cap", "errors", "ingest", "instruct", "masks", "mixture", "prompts", "refseg", "report", "seg", "tokens", "transforms", "validate",
    "volume", "vqa",
]
