"""Models: the 3D ViT, CLIP, the spatial-pooling perceiver, LaMed and the segmentation module; local loading only."""

from m3d_components.models import clip, lamed, local, perceiver, trainable, vision

__all__ = ["clip", "lamed", "local", "perceiver", "trainable", "vision"]
