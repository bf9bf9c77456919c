"""Data: readers of the published M3D formats, prompts, transforms, own-scan ingestion and the demo corpus.

Submodules load on first use (:mod:`m3d_components._lazy`)."""

from m3d_components._lazy import lazy_submodules

__all__ = [
    "boxes", "cap", "errors", "ingest", "instruct", "masks", "mixture", "prompts", "refseg", "report", "seg",
    "tokens", "transforms", "validate", "volume", "vqa",
]
__getattr__, __dir__ = lazy_submodules(__name__, __all__)
