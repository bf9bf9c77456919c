"""Analytic CT-like phantoms: one synthetic torso per case, rendered as a canonical volume plus a label map.

Every structure is an axis-aligned ellipsoid, elliptic cylinder or tube evaluated by numpy broadcasting over three
1-D coordinate axes, so a 32×256×256 case costs a few dozen array operations and no per-voxel Python.

Patient coordinates are normalised, one unit = 200 mm: ``x`` runs from the patient's right (−) to left (+), ``y``
from anterior (−) to posterior (+), ``z`` from superior (−) to inferior (+). A case shows one body *region* (a
1.3-unit window along ``z``; each region holds its own organs, so the set of visible organs changes with it), in one
contrast *phase* (which sets the intensity of every enhancing tissue), resliced in one *plane*:

==========  ==========================  ==========================  ==========================
plane       D (index 0 → end)           H (index 0 → end)           W (index 0 → end)
==========  ==========================  ==========================  ==========================
axial       superior → inferior         anterior → posterior        patient right → left
coronal     anterior → posterior        superior → inferior         patient right → left
sagittal    patient right → left        superior → inferior         anterior → posterior
==========  ==========================  ==========================  ==========================

W increasing towards the patient's left is the radiological display convention (the patient's right on the left of
the screen). The field of view is 400 mm left–right, 320 mm anterior–posterior and 260 mm superior–inferior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from m3d_components.data.boxes import mask_to_box
from m3d_components.data.volume import check_volume, minmax_normalize

__all__ = [
    "CLASSES",
    "DENSITIES",
    "LESION_ORGANS",
    "MIN_SIZE",
    "MM_PER_UNIT",
    "ORGAN_REGION",
    "ORGAN_SIDE",
    "PARTS",
    "PHASES",
    "PLANES",
    "REGIONS",
    "REGION_ORGANS",
    "CaseSpec",
    "Phantom",
    "check_size",
    "render_phantom",
]

MM_PER_UNIT = 200.0
PLANES = ("axial", "coronal", "sagittal")
PHASES = ("non-contrast", "arterial", "portal venous", "delayed")
REGIONS = ("chest", "upper abdomen", "lower abdomen")
# Organs that only their own region shows; the aorta runs through all three regions.
REGION_ORGANS = {
    "chest": ("left lung", "right lung", "heart"),
    "upper abdomen": ("liver", "spleen", "gallbladder"),
    "lower abdomen": ("left kidney", "right kidney", "bladder"),
}
ORGAN_REGION = {organ: region for region, organs in REGION_ORGANS.items() for organ in organs}
# M3D-Seg class order of the demo dataset: mask_<i>.npy holds CLASSES[i].
CLASSES = ("liver", "spleen", "left kidney", "right kidney", "left lung", "right lung", "bladder", "aorta", "heart",
           "gallbladder", "lesion")
# One left and one right organ per region, so lesion side and region are balanced by construction.
LESION_ORGANS = ("left lung", "right lung", "liver", "spleen", "left kidney", "right kidney")
ORGAN_SIDE = {"left lung": "left", "right lung": "right", "liver": "right", "spleen": "left", "left kidney": "left",
              "right kidney": "right"}
DENSITIES = ("hypodense", "hyperdense")
PARTS = ("upper", "lower")
# Below this the gallbladder spans fewer than two voxels along some axis in some plane.
MIN_SIZE = (16, 32, 32)

_HALF_FOV = {"x": 1.0, "y": 0.8, "z": 0.65}
_REGION_Z = {"chest": -1.3, "upper abdomen": 0.0, "lower abdomen": 1.3}
_PLANE_AXES = {"axial": ("z", "y", "x"), "coronal": ("y", "z", "x"), "sagittal": ("x", "z", "y")}

# Nominal organ ellipsoids: centre (x, y, z relative to the region centre) and radii, in normalised units. Each lies
# at least 0.07 inside its region's window after jitter, so an organ is either wholly visible or wholly absent.
_ORGAN_LAYOUT = {
    "right lung": ((-0.42, 0.0, 0.0), (0.30, 0.42, 0.45)),
    "left lung": ((0.42, 0.0, 0.0), (0.28, 0.42, 0.45)),
    "heart": ((0.10, -0.20, 0.15), (0.28, 0.22, 0.25)),
    "liver": ((-0.32, -0.02, -0.02), (0.40, 0.42, 0.40)),
    "gallbladder": ((-0.30, -0.40, 0.25), (0.10, 0.09, 0.16)),
    "spleen": ((0.52, 0.20, -0.10), (0.17, 0.25, 0.28)),
    "right kidney": ((-0.38, 0.30, -0.18), (0.15, 0.13, 0.26)),
    "left kidney": ((0.38, 0.30, -0.16), (0.15, 0.13, 0.26)),
    "bladder": ((0.0, -0.30, 0.32), (0.25, 0.20, 0.17)),
}
_LIVER_LEFT_LOBE = ((0.37, -0.26, -0.10), (0.62, 0.43, 0.50))  # offset from the liver centre; radii as liver fractions
# Lesion radii: at least 0.15 (60 mm across), i.e. >= 9 voxels in-plane and >= 4 slices at 32×64×64 in every plane.
_LESION_RADIUS = {"left lung": (0.15, 0.21), "right lung": (0.15, 0.21), "liver": (0.15, 0.22),
                  "spleen": (0.15, 0.18), "left kidney": (0.15, 0.18), "right kidney": (0.15, 0.18)}

# Hounsfield-like values per phase (non-contrast, arterial, portal venous, delayed). Arterial: blood and renal cortex
# bright; portal venous: liver, spleen and kidneys bright; delayed: renal pelvis and bladder bright (excreted contrast).
# Enhanced tissues stay below 350 HU so that only bone and hyperdense lesions reach the top of the display.
_HU = {
    "air": (-1000, -1000, -1000, -1000),
    "fat": (-100, -100, -100, -100),
    "muscle": (45, 50, 60, 55),
    "visceral fat": (-60, -60, -60, -60),  # fat and bowel between the organs: outlines them in every phase
    "lung": (-800, -800, -800, -800),
    "lung mass": (40, 80, 100, 80),
    "blood": (40, 340, 220, 130),
    "liver": (60, 80, 210, 120),
    "gallbladder": (10, 10, 10, 10),
    "spleen": (50, 150, 200, 110),
    "kidney cortex": (35, 280, 210, 150),
    "kidney medulla": (35, 60, 210, 150),
    "renal pelvis": (10, 10, 20, 340),
    "bladder": (8, 8, 15, 340),
    "bone": (700, 700, 700, 700),
    "disc": (80, 80, 80, 80),
    "csf": (15, 15, 15, 15),
}
_ORGAN_TISSUE = {"left lung": "lung", "right lung": "lung", "heart": "blood", "liver": "liver",
                 "gallbladder": "gallbladder", "spleen": "spleen", "bladder": "bladder"}
# Lesion intensities lie where no normal tissue of the body is: hypodense between lung and fat, hyperdense at the
# top of the display; lung lesions are soft-tissue masses in air-filled lung.
_LESION_HU = {"hypodense": (-260.0, -200.0), "hyperdense": (420.0, 500.0)}
# Display curve: air → 0, lung → ~0.05, fat → 0.3, soft tissue → ~0.5, ≥ 400 HU (bone) → 1.
_DISPLAY_HU = (-1000.0, -200.0, 400.0)
_DISPLAY_LEVEL = (0.0, 0.18, 1.0)
_WALL = 0.06  # thickness of the muscle wall (and the ribs in it)
_NOISE = 0.015
_BLUR_VOXELS = 0.6

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class CaseSpec:
    """What a case shows; everything else (positions, sizes, noise) comes from the case's random generator.

    ``lesion_organ``, ``density`` and ``part`` are all None (no lesion) or all set; the lesion organ must belong to
    the region.
    """

    plane: str
    phase: str
    region: str
    lesion_organ: str | None = None
    density: str | None = None
    part: str | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("plane", self.plane, PLANES), ("phase", self.phase, PHASES),
                                     ("region", self.region, REGIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        lesion = (self.lesion_organ, self.density, self.part)
        if any(v is None for v in lesion) and any(v is not None for v in lesion):
            raise ValueError(f"lesion_organ, density and part must be all set or all None, got {lesion}")
        if self.lesion_organ is not None:
            if ORGAN_REGION.get(self.lesion_organ) != self.region or self.lesion_organ not in LESION_ORGANS:
                raise ValueError(f"lesion organ {self.lesion_organ!r} cannot occur in region {self.region!r}; "
                                 f"choose from {[o for o in LESION_ORGANS if ORGAN_REGION[o] == self.region]}")
            if self.density not in DENSITIES or self.part not in PARTS:
                raise ValueError(f"density must be in {DENSITIES} and part in {PARTS}, got {self.density!r}, "
                                 f"{self.part!r}")
            if self.density == "hypodense" and self.lesion_organ.endswith("lung"):
                raise ValueError("lung lesions are solid masses: density must be 'hyperdense'")


@dataclass
class Phantom:
    """One rendered case.

    Attributes:
        volume: (1, D, H, W) float32 in [0, 1].
        labels: (D, H, W) uint8; 0 = no class, i + 1 = ``CLASSES[i]`` (the lesion is not painted here, so organ masks
            keep the voxels a lesion covers).
        lesion: (D, H, W) bool lesion mask, or None.
        attributes: JSON-ready facts about the case (spec, measurements, spacing, lesion size and voxel box).
    """

    volume: np.ndarray
    labels: np.ndarray
    lesion: np.ndarray | None
    attributes: dict


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates, each broadcastable to ``shape`` (size 1 on the other two axes)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class _Anatomy:
    z_centre: float  # centre of the field of view along z
    body: tuple[float, float]  # outer radii (x, y) of the body's elliptic cylinder
    fat: float  # subcutaneous fat thickness
    organs: dict[str, tuple[Vec3, Vec3]]  # name -> (centre, radii), absolute coordinates
    aorta: tuple[float, float, float]  # x, y, radius
    bifurcation_z: float
    spine: tuple[float, float]  # x, y of the vertebral bodies
    rib_phase: float
    disc_phase: float


@dataclass(frozen=True)
class _Lesion:
    centre: Vec3
    radius: float


def _make_grid(plane: str, size: tuple[int, int, int], z_centre: float) -> _Grid:
    bounds = {axis: (-half, half) for axis, half in _HALF_FOV.items()}
    bounds["z"] = (z_centre - _HALF_FOV["z"], z_centre + _HALF_FOV["z"])
    coords, spacing = {}, []
    for dim, (axis, n) in enumerate(zip(_PLANE_AXES[plane], size)):
        lo, hi = bounds[axis]
        step = (hi - lo) / n
        shape = [1, 1, 1]
        shape[dim] = n
        coords[axis] = (lo + (np.arange(n, dtype=np.float32) + 0.5) * step).reshape(shape)
        spacing.append(round(step * MM_PER_UNIT, 4))
    return _Grid(coords["x"], coords["y"], coords["z"], tuple(size), tuple(spacing))  # type: ignore[arg-type]


def _ellipsoid(g: _Grid, centre: Vec3, radii: Vec3) -> np.ndarray:
    (cx, cy, cz), (rx, ry, rz) = centre, radii
    return ((g.x - cx) / rx) ** 2 + ((g.y - cy) / ry) ** 2 + ((g.z - cz) / rz) ** 2 <= 1.0


def _ellipse(g: _Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """An elliptic cylinder along z, as a full (D, H, W) mask."""
    return np.broadcast_to(((g.x - cx) / rx) ** 2 + ((g.y - cy) / ry) ** 2 <= 1.0, g.shape)


def _sample_anatomy(region: str, rng: np.random.Generator) -> _Anatomy:
    """Jitter the nominal layout: organ centres ±0.04, radii ±10 %, body size ±5 %, fat 8–20 mm."""
    z_region = _REGION_Z[region]
    organs = {}
    for name in REGION_ORGANS[region]:
        (cx, cy, cz), radii = _ORGAN_LAYOUT[name]
        centre = np.array([cx, cy, z_region + cz]) + rng.uniform(-0.04, 0.04, 3)
        scaled = np.array(radii) * rng.uniform(0.9, 1.1, 3)
        organs[name] = (tuple(float(v) for v in centre), tuple(float(v) for v in scaled))
    return _Anatomy(
        z_centre=z_region + float(rng.uniform(-0.03, 0.03)),
        body=(0.9 * float(rng.uniform(0.95, 1.05)), 0.72 * float(rng.uniform(0.95, 1.05))),
        fat=float(rng.uniform(0.04, 0.10)),
        organs=organs,
        aorta=(0.08 + float(rng.uniform(-0.015, 0.015)), 0.27 + float(rng.uniform(-0.015, 0.015)),
               0.06 * float(rng.uniform(0.9, 1.15))),
        bifurcation_z=_REGION_Z["lower abdomen"] + float(rng.uniform(-0.05, 0.05)),
        spine=(float(rng.uniform(-0.01, 0.01)), 0.47 + float(rng.uniform(-0.01, 0.01))),
        rib_phase=float(rng.uniform(0.0, 0.2)),
        disc_phase=float(rng.uniform(0.0, 0.24)),
    )


def _sample_lesion(spec: CaseSpec, anatomy: _Anatomy, rng: np.random.Generator) -> _Lesion:
    """A sphere centred in the organ, shifted 50–65 % of the organ's half-length up or down (``spec.part``)."""
    centre, radii = anatomy.organs[spec.lesion_organ]
    radius = float(rng.uniform(*_LESION_RADIUS[spec.lesion_organ]))
    shift_xy = rng.uniform(-0.15, 0.15, 2) * np.array(radii[:2])
    shift_z = float(rng.uniform(0.50, 0.65)) * radii[2] * (-1.0 if spec.part == "upper" else 1.0)
    return _Lesion((centre[0] + float(shift_xy[0]), centre[1] + float(shift_xy[1]), centre[2] + shift_z), radius)


class _Painter:
    """Paints tissues in order; later structures overwrite earlier ones in both the HU and the label map."""

    def __init__(self, shape: tuple[int, int, int], phase: str) -> None:
        self.hu = np.full(shape, _HU["air"][0], dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)
        self._phase = PHASES.index(phase)

    def tissue_hu(self, tissue: str) -> float:
        return float(_HU[tissue][self._phase])

    def paint(self, mask: np.ndarray, tissue: str, label: str | None = None) -> None:
        self.hu[mask] = self.tissue_hu(tissue)
        self.labels[mask] = 0 if label is None else CLASSES.index(label) + 1


def _paint_body(p: _Painter, g: _Grid, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Subcutaneous fat, a muscle wall and a fatty body cavity.

    Returns:
        (wall, cavity) masks, (D, H, W): ribs sit in the wall, organs are clipped to the cavity.
    """
    (rx, ry), t = a.body, a.fat
    p.paint(_ellipse(g, 0.0, 0.0, rx, ry), "fat")
    muscle = _ellipse(g, 0.0, 0.0, rx - t, ry - t)
    cavity = _ellipse(g, 0.0, 0.0, rx - t - _WALL, ry - t - _WALL)
    p.paint(muscle, "muscle")
    p.paint(cavity, "visceral fat")
    return muscle & ~cavity, cavity


def _paint_organs(p: _Painter, g: _Grid, a: _Anatomy, cavity: np.ndarray) -> None:
    for name, (centre, radii) in a.organs.items():
        mask = _ellipsoid(g, centre, radii)
        if name == "liver":
            offset, scale = _LIVER_LEFT_LOBE
            lobe_centre = tuple(c + o for c, o in zip(centre, offset))
            mask |= _ellipsoid(g, lobe_centre, tuple(r * s for r, s in zip(radii, scale)))
        mask &= cavity
        if name.endswith("kidney"):
            _paint_kidney(p, g, name, centre, radii, mask)
        else:
            p.paint(mask, _ORGAN_TISSUE[name], name)


def _paint_kidney(p: _Painter, g: _Grid, name: str, centre: Vec3, radii: Vec3, mask: np.ndarray) -> None:
    """Cortex, medulla and a medial renal pelvis, so arterial (cortex) and delayed (pelvis) phases look different."""
    p.paint(mask, "kidney cortex", name)
    p.paint(mask & _ellipsoid(g, centre, tuple(0.65 * r for r in radii)), "kidney medulla", name)
    medial = -np.sign(centre[0]) * 0.45 * radii[0]
    pelvis = _ellipsoid(g, (centre[0] + medial, centre[1], centre[2]), tuple(0.4 * r for r in radii))
    p.paint(mask & pelvis, "renal pelvis", name)


def _paint_vessels(p: _Painter, g: _Grid, a: _Anatomy) -> None:
    """The aorta down to its bifurcation, then two unlabelled iliac arteries diverging towards the pelvis."""
    ax, ay, r = a.aorta
    above = np.broadcast_to(g.z <= a.bifurcation_z, g.shape)
    p.paint(_ellipse(g, ax, ay, r, r) & above, "blood", "aorta")
    t = np.clip((g.z - a.bifurcation_z) / 0.65, 0.0, None)  # 0 at the bifurcation, 1 at the pelvic floor
    for side in (-1.0, 1.0):
        cx, cy = ax + (0.32 * side - ax) * t, ay + (0.05 - ay) * t
        iliac = ((g.x - cx) ** 2 + (g.y - cy) ** 2 <= (0.75 * r) ** 2) & (g.z > a.bifurcation_z)
        p.paint(iliac, "blood")


def _paint_bones(p: _Painter, g: _Grid, a: _Anatomy, region: str, wall: np.ndarray) -> None:
    """Spine with discs everywhere, ribs in the chest, iliac wings low in the abdomen: bone is the brightest tissue,
    so the min–max scaling is stable across phases, and the periodic ribs and discs mark the superior–inferior axis."""
    sx, sy = a.spine
    vertebra = _ellipse(g, sx, sy, 0.10, 0.10)
    bone_rows = np.cos(2 * np.pi * (g.z - a.disc_phase) / 0.24) > -0.6
    p.paint(vertebra & bone_rows, "bone")
    p.paint(vertebra & ~bone_rows, "disc")
    p.paint(_ellipse(g, sx, sy + 0.14, 0.04, 0.04), "csf")
    if region == "chest":
        p.paint(wall & (np.cos(2 * np.pi * (g.z - a.rib_phase) / 0.2) > 0.3), "bone")
    if region == "lower abdomen":
        for side in (-1.0, 1.0):
            wing = _ellipsoid(g, (0.6 * side, 0.3, _REGION_Z[region] + 0.3), (0.06, 0.25, 0.28))
            p.paint(wing, "bone")


def _lesion_hu(p: _Painter, spec: CaseSpec, rng: np.random.Generator) -> float:
    """Lesion HU: phase-independent, and far from its organ's value in every phase (see ``_LESION_HU``)."""
    value = float(rng.uniform(*_LESION_HU[spec.density]))
    return p.tissue_hu("lung mass") if spec.lesion_organ.endswith("lung") else value


def _to_display(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU → display curve, slight blur (partial volume), mild noise, then min–max to [0, 1]; (1, D, H, W)."""
    level = np.interp(hu, _DISPLAY_HU, _DISPLAY_LEVEL).astype(np.float32)
    level = gaussian_filter(level, _BLUR_VOXELS)
    level += _NOISE * rng.standard_normal(level.shape, dtype=np.float32)
    return minmax_normalize(level[None], "demo phantom")


def _cm(units: float) -> float:
    return round(units * MM_PER_UNIT / 10.0, 1)


def _measurements(a: _Anatomy) -> dict[str, float]:
    """Sizes the report quotes, in cm: each follows from a jittered parameter, so it is visible in the image."""
    out = {"aorta": _cm(2 * a.aorta[2]), "fat": _cm(a.fat)}
    lengths = {"heart": ("heart", 0), "liver": ("liver", 2), "spleen": ("spleen", 2),
               "left_kidney": ("left kidney", 2), "right_kidney": ("right kidney", 2)}
    for key, (organ, axis) in lengths.items():
        if organ in a.organs:
            out[key] = _cm(2 * a.organs[organ][1][axis])
    return out


def check_size(size: tuple[int, int, int]) -> tuple[int, int, int]:
    """``size`` as a (D, H, W) tuple of ints; ValueError when it is below ``MIN_SIZE``."""
    size = tuple(int(s) for s in size)
    if len(size) != 3 or any(s < m for s, m in zip(size, MIN_SIZE)):
        raise ValueError(f"size must be (D, H, W) with D >= {MIN_SIZE[0]} and H, W >= {MIN_SIZE[1]} so every organ "
                         f"spans at least two voxels, got {size}")
    return size  # type: ignore[return-value]


def render_phantom(spec: CaseSpec, size: tuple[int, int, int], rng: np.random.Generator) -> Phantom:
    """Render one case.

    The generator is consumed in a fixed order (anatomy, then lesion, then noise), so two specs that differ only in
    plane or phase give the same body when rendered from equally seeded generators.

    Args:
        spec: plane, phase, region and lesion of the case.
        size: (D, H, W) of the output grid, at least ``MIN_SIZE``.
        rng: the case's random generator.

    Returns:
        A :class:`Phantom` with a (1, D, H, W) float32 volume in [0, 1].
    """
    size = check_size(size)
    anatomy = _sample_anatomy(spec.region, rng)
    lesion = _sample_lesion(spec, anatomy, rng) if spec.lesion_organ else None
    grid = _make_grid(spec.plane, size, anatomy.z_centre)
    painter = _Painter(size, spec.phase)
    wall, cavity = _paint_body(painter, grid, anatomy)
    _paint_organs(painter, grid, anatomy, cavity)
    _paint_vessels(painter, grid, anatomy)
    _paint_bones(painter, grid, anatomy, spec.region, wall)
    lesion_mask = None
    if lesion is not None:
        lesion_mask = _ellipsoid(grid, lesion.centre, (lesion.radius,) * 3) & cavity
        painter.hu[lesion_mask] = _lesion_hu(painter, spec, rng)
    volume = check_volume(_to_display(painter.hu, rng), "demo phantom")
    attributes = {
        "plane": spec.plane,
        "phase": spec.phase,
        "region": spec.region,
        "organs": [c for i, c in enumerate(CLASSES[:-1]) if (painter.labels == i + 1).any()],
        "spacing_mm": list(grid.spacing_mm),
        "measurements_cm": _measurements(anatomy),
        "lesion": None if lesion is None else {
            "organ": spec.lesion_organ,
            "side": ORGAN_SIDE[spec.lesion_organ],
            "density": spec.density,
            "part": spec.part,
            "size_mm": round(2 * lesion.radius * MM_PER_UNIT, 1),
            "box": list(mask_to_box(lesion_mask)),
        },
    }
    return Phantom(volume, painter.labels, lesion_mask, attributes)
