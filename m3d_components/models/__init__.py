"""Models: the 3D ViT, CLIP, the spatial-pooling perceiver, LaMed and the segmentation module; local loading only."""

from m3d_components.models import (
    chat, clip, compiled, lamed, lamed_seg, local, perceiver, segmentation, trainable, vision,
)

__all__ = [
    "chat", "clip", "compiled", "lamed", "lamed_seg", "local", "perceiver", "segmentation", "trainable", "vision",
]
