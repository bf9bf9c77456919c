"""Models: the 3D ViT, CLIP, the spatial-pooling perceiver, LaMed and the segmentation module; local loading only.

Submodules load on first use (:mod:`m3d_components._lazy`)."""

from m3d_components._lazy import lazy_submodules

__all__ = [
    "chat", "clip", "compiled", "lamed", "lamed_seg", "local", "perceiver", "segmentation", "trainable", "vision",
]
__getattr__, __dir__ = lazy_submodules(__name__, __all__)
