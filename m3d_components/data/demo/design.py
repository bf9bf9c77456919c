"""Balanced case designs: which plane, phase, region and lesion each case of a split shows.

Attributes are drawn in shuffled blocks of 36 cases rather than independently, so that every answer a question can
have is (nearly) equally frequent even in a 30-case split, and a model that ignores the image scores at chance. A
block holds 12 cases without a lesion (4 per region), 12 with a hypodense and 12 with a hyperdense lesion; each of
the six lesion organs occurs 4 times (2 in its upper, 2 in its lower part). Lung lesions are always hyperdense (a solid
mass in air-filled lung), which the other organs make up for by carrying 3 hypodense lesions to 1 hyperdense.
Plane (12 each) and phase (9 each) are shuffled independently of the lesion, so no attribute predicts another.
"""

from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import numpy as np

from m3d_components.data.demo.phantom import LESION_ORGANS, ORGAN_REGION, PARTS, PHASES, PLANES, REGIONS, CaseSpec

__all__ = ["BLOCK", "BalancedCycle", "design_split"]

BLOCK = 36
T = TypeVar("T")


class BalancedCycle(Generic[T]):
    """Hands out ``values`` in shuffled rounds, so after k full rounds each value has occurred exactly k times.

    Used for the correct answer's letter (A–D) per question type and for answer choices that the design does not
    fix, so their tallies stay flat however many questions a split ends up with.
    """

    def __init__(self, values: Sequence[T], rng: np.random.Generator) -> None:
        if not values:
            raise ValueError("BalancedCycle needs at least one value")
        self._values = list(values)
        self._rng = rng
        self._pending: list[T] = []

    def next(self) -> T:
        if not self._pending:
            self._pending = [self._values[i] for i in self._rng.permutation(len(self._values))]
        return self._pending.pop()


def _lesion_rows(rng: np.random.Generator) -> list[tuple[str, str | None, str | None, str | None]]:
    """(region, lesion organ, density, part) for the 36 cases of one block, in a fixed order."""
    rows: list[tuple[str, str | None, str | None, str | None]] = []
    for organ in LESION_ORGANS:
        lung = organ.endswith("lung")
        densities = ["hyperdense"] * 4 if lung else ["hyperdense", "hypodense", "hypodense", "hypodense"]
        parts = [PARTS[i] for i in rng.permutation([0, 0, 1, 1])]
        rows += [(ORGAN_REGION[organ], organ, d, p) for d, p in zip(densities, parts)]
    rows += [(region, None, None, None) for region in REGIONS for _ in range(4)]
    return rows


def _block(rng: np.random.Generator) -> list[CaseSpec]:
    lesions = _lesion_rows(rng)
    planes = [PLANES[i % len(PLANES)] for i in range(BLOCK)]
    phases = [PHASES[i % len(PHASES)] for i in range(BLOCK)]
    order, plane_order, phase_order = (rng.permutation(BLOCK) for _ in range(3))
    return [
        CaseSpec(planes[p], phases[q], *lesions[i]) for i, p, q in zip(order, plane_order, phase_order)
    ]


def design_split(n: int, rng: np.random.Generator) -> list[CaseSpec]:
    """Specs of ``n`` cases: whole shuffled blocks of 36, the last one cut short."""
    if n < 0:
        raise ValueError(f"number of cases must be >= 0, got {n}")
    specs: list[CaseSpec] = []
    while len(specs) < n:
        specs += _block(rng)
    return specs[:n]
