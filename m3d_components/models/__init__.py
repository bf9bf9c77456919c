"""Models: the 3D ViT, CLIP, the spatial-pooling perceiver, LaMed and the segmentation module; local loading only."""

from m3d_components.models import clip, local, vision

__all__ = ["clip", "local", "vision"]
