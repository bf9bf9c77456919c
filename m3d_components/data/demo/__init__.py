"""The deterministic synthetic demo corpus: CT-like phantoms written in every M3D format.

It powers ``m3d demo``, the tests and every bundle's ``demo`` config. Answers depend on the image (plane, contrast
phase, region, organs, lesion presence, organ, side, part and density) and are balanced, so a model that ignores the
image scores at chance. See ``docs/data.md`` (demo corpus) for the vocabulary, layout and expected blind accuracy.
"""

from __future__ import annotations

from m3d_components.data.demo.corpus import GENERATOR_VERSION, ORIENTATION, SEG_DATASET, make_demo_data
from m3d_components.data.demo.phantom import (
    CLASSES,
    DENSITIES,
    LESION_ORGANS,
    PARTS,
    PHASES,
    PLANES,
    REGION_ORGANS,
    REGIONS,
    CaseSpec,
    Phantom,
    render_phantom,
)

__all__ = [
    "CLASSES",
    "DENSITIES",
    "GENERATOR_VERSION",
    "LESION_ORGANS",
    "ORIENTATION",
    "PARTS",
    "PHASES",
    "PLANES",
    "REGIONS",
    "REGION_ORGANS",
    "SEG_DATASET",
    "CaseSpec",
    "Phantom",
    "make_demo_data",
    "render_phantom",
]
