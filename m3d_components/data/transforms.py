"""MONAI dictionary transform chains for training and evaluation samples.

The training chain is the published M3D augmentation (quarter turns in the axial plane, flips, intensity jitter),
with one correction. A flip along any axis is a mirror: the anatomy comes out with the other handedness, a left
kidney where a right one would be (a D or H flip is a W flip followed by a rotation — a 180° turn in the axial plane
after an H flip gives exactly the W-flipped volume). :class:`RandMirrord` therefore swaps "left" and "right" in the
sample's text whenever its draw mirrors the image and masks an odd number of times. Quarter turns are proper
rotations, so anatomy keeps its handedness and the text stays as it is. Any other rule gives one volume two
opposite labels.

With ``train_transforms(on_device=True)`` the image part moves to the GPU: :class:`RandDeviceAugmentd` draws the same
parameters per sample, moves the masks and swaps the text on the CPU (boxes and mask targets are computed from the
masks before collation) and stores the draw; :func:`apply_augmentation` then applies it to the collated image batch
wherever that batch lives, so the DataLoader workers no longer rotate and rescale full volumes.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    Flip,
    MapTransform,
    RandomizableTransform,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Rotate90,
)
from monai.utils import ensure_tuple

__all__ = [
    "AUGMENTATION_KEY",
    "LATERALITY_MODES",
    "RandDeviceAugmentd",
    "RandMirrord",
    "apply_augmentation",
    "eval_transforms",
    "swap_laterality",
    "train_transforms",
]

LATERALITY_MODES = ("swap", "off")
_AXIS_D, _AXIS_H, _AXIS_W = 0, 1, 2  # spatial axes of (C, D, H, W); W is patient left–right
_LATERAL_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OPPOSITE = {"left": "right", "right": "left"}
AUGMENTATION_KEY = "augmentation"  # the sample/batch key of a device-side draw: [k, flip_d, flip_h, flip_w, f, o]


def _swap_word(match: re.Match[str]) -> str:
    word = match.group(0)
    opposite = _OPPOSITE[word.lower()]
    if word.isupper():
        return opposite.upper()
    return opposite.capitalize() if word[0].isupper() else opposite


def swap_laterality(text: str) -> str:
    """Exchange the whole words "left" and "right", keeping capitalisation ("Left" → "Right", "LEFT" → "RIGHT").

    Words that merely contain them ("leftover", "rightmost") are left alone; hyphenated forms ("left-sided") swap.
    """
    return _LATERAL_WORD.sub(_swap_word, text)


def _swap_nested(value: Any) -> Any:
    """:func:`swap_laterality` on a string, or on every string inside lists, tuples and dict values."""
    if isinstance(value, str):
        return swap_laterality(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_swap_nested(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _swap_nested(v) for k, v in value.items()}
    return value


def mirrors_handedness(flips: Sequence[float | bool]) -> bool:
    """Whether flips along (D, H, W) (truthy where taken) mirror the anatomy: an odd number of them does."""
    return sum(bool(f) for f in flips) % 2 == 1


class RandMirrord(RandomizableTransform, MapTransform):
    """Flip the image and masks along D, H and W, each with its own probability, and swap "left"/"right" in the
    text when the result is mirrored (:func:`mirrors_handedness`), so that image and text name the same sides.

    Args:
        keys: image and mask keys, all flipped together; arrays are channel-first (C, D, H, W).
        text_keys: keys whose strings (or lists / dicts of strings) get their laterality words swapped; keys absent
            from a sample are skipped.
        flip_probs: the probabilities of a D, an H and a W flip.
        allow_missing_keys: don't raise when an image/mask key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        text_keys: KeysCollection = (),
        flip_probs: Sequence[float] = (0.1, 0.1, 0.1),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if len(flip_probs) != 3:
            raise ValueError(f"flip_probs needs one probability per axis (D, H, W), got {list(flip_probs)}")
        self.text_keys = ensure_tuple(text_keys)
        self.flip_probs = tuple(float(p) for p in flip_probs)
        self._flips = tuple(Flip(spatial_axis=axis) for axis in (_AXIS_D, _AXIS_H, _AXIS_W))
        self._draw = (False, False, False)

    def randomize(self, data: Any = None) -> None:
        self._draw = tuple(bool(self.R.rand() < p) for p in self.flip_probs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            for flip, flag in zip(self._flips, self._draw):
                if flag:
                    d[key] = flip(d[key])
        if mirrors_handedness(self._draw):
            for key in self.text_keys:
                if key in d:
                    d[key] = _swap_nested(d[key])
        return d


def _check_settings(laterality: str, **probabilities: float) -> None:
    """Reject an unknown laterality mode or a probability outside [0, 1], naming the setting."""
    if laterality not in LATERALITY_MODES:
        raise ValueError(f"laterality must be one of {LATERALITY_MODES}, got {laterality!r}")
    for name, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


class RandDeviceAugmentd(RandomizableTransform, MapTransform):
    """Draw the training augmentation per sample on the CPU and leave the image to :func:`apply_augmentation`.

    The draw has the kinds, probabilities and ranges of :func:`train_transforms`. Masks get its spatial part here,
    with MONAI's ``Rotate90``/``Flip`` (boxes and segmentation targets are computed from them before collation), and
    a mirroring draw swaps "left"/"right" in the text as :class:`RandMirrord` does. The image is left as it is; the draw
    is stored under ``augmentation_key`` as float32 ``[k, flip_d, flip_h, flip_w, scale_factor, shift_offset]``, which
    the collators stack and :class:`~m3d_components.engines.batch.PrepareImageTextBatch` applies on the device.

    Args:
        keys: the image key(s) the draw is for; they must be present (unless ``allow_missing_keys``) and stay as
            they are.
        mask_keys: (C, D, H, W) masks moved here with the draw; they must be present in every sample.
        text_keys: keys whose text gets its laterality words swapped by a mirroring draw; may be missing from a
            sample.
        laterality, rotate_prob, flip_d_prob, flip_h_prob, flip_w_prob, scale_prob, scale_factors, shift_prob,
            shift_offsets: as in :func:`train_transforms`.
        augmentation_key: where the draw goes in the sample.
        allow_missing_keys: don't raise when an image key is missing.

    Raises:
        ValueError: for an unknown ``laterality`` or a probability outside [0, 1].
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_keys: Sequence[str] = (),
        text_keys: Sequence[str] = (),
        laterality: str = "swap",
        rotate_prob: float = 0.5,
        flip_d_prob: float = 0.1,
        flip_h_prob: float = 0.1,
        flip_w_prob: float = 0.1,
        scale_prob: float = 0.5,
        scale_factors: float = 0.1,
        shift_prob: float = 0.5,
        shift_offsets: float = 0.1,
        augmentation_key: str = AUGMENTATION_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        _check_settings(laterality, rotate_prob=rotate_prob, flip_d_prob=flip_d_prob, flip_h_prob=flip_h_prob,
                        flip_w_prob=flip_w_prob, scale_prob=scale_prob, shift_prob=shift_prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.mask_keys = tuple(mask_keys)
        self.text_keys = tuple(text_keys)
        self.rotate_prob = rotate_prob
        self.flip_probs = (flip_d_prob, flip_h_prob, flip_w_prob) if laterality == "swap" else (0.0, 0.0, 0.0)
        self.scale_prob, self.scale_factors = scale_prob, abs(scale_factors)
        self.shift_prob, self.shift_offsets = shift_prob, abs(shift_offsets)
        self.augmentation_key = augmentation_key
        self._rotations = {k: Rotate90(k, spatial_axes=(_AXIS_H, _AXIS_W)) for k in (1, 2, 3)}
        self._flips = tuple(Flip(spatial_axis=axis) for axis in (_AXIS_D, _AXIS_H, _AXIS_W))
        self._draw = [0.0] * 6

    def randomize(self, data: Any = None) -> None:
        """One draw from ``self.R``: a coin per step, then its value when the step is taken."""
        turns = float(self.R.randint(1, 4)) if self.R.rand() < self.rotate_prob else 0.0
        flips = [float(self.R.rand() < p) for p in self.flip_probs]
        scale = self.R.uniform(-self.scale_factors, self.scale_factors) if self.R.rand() < self.scale_prob else 0.0
        shift = self.R.uniform(-self.shift_offsets, self.shift_offsets) if self.R.rand() < self.shift_prob else 0.0
        self._draw = [turns, *flips, scale, shift]

    def _move_mask(self, mask: Any) -> Any:
        """The draw's spatial part, in the order of the CPU chain: rotate, then flip D, H and W."""
        turns = int(self._draw[0])
        if turns:
            mask = self._rotations[turns](mask)
        for flip, flag in zip(self._flips, self._draw[1:4]):
            if flag:
                mask = flip(mask)
        return mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        list(self.key_iterator(d))  # a missing image raises here; a present one is augmented after collation
        self.randomize()
        for key in self.mask_keys:
            d[key] = self._move_mask(d[key])
        if mirrors_handedness(self._draw[1:4]):
            for key in self.text_keys:
                if key in d:
                    d[key] = _swap_nested(d[key])
        d[self.augmentation_key] = torch.tensor(self._draw, dtype=torch.float32)
        return d


def _rotate_groups(image: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Quarter turns in the H–W plane, one ``rot90`` per distinct k (at most three), not one per sample."""
    if not bool(turns.any()):
        return image
    if bool(((turns < 0) | (turns > 3)).any()):
        raise ValueError(f"quarter turns must be 0–3, got {turns.tolist()}")
    if image.shape[-2] != image.shape[-1]:
        raise ValueError(f"quarter turns in the H–W plane need H == W, got an image batch of {tuple(image.shape)}")
    out = image.clone()
    for k in (1, 2, 3):
        index = (turns == k).nonzero().flatten().to(image.device)
        if len(index):
            out[index] = torch.rot90(image[index], k, dims=(-2, -1))
    return out


def apply_augmentation(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply per-sample draws of :class:`RandDeviceAugmentd` to a (B, C, D, H, W) batch on the image's device.

    Same order as the CPU chain — rotate, flip D, flip H, flip W, v·(1 + f), v + o — with no per-sample loop:
    rotations are grouped by k, flips select with ``torch.where``, intensity broadcasts. The turns are read on the
    host (the group sizes decide the launches), which costs no device sync when ``params`` is still on the CPU.

    Args:
        image: floating-point (B, C, D, H, W) batch.
        params: (B, 6) draws ``[k, flip_d, flip_h, flip_w, scale_factor, shift_offset]``, on any device.

    Raises:
        ValueError: for a non-float or non-5-D image, ``params`` not (B, 6), k outside 0–3, or a quarter turn with
            H != W.
    """
    if image.ndim != 5 or not image.is_floating_point():
        raise ValueError(f"need a floating-point (B, C, D, H, W) image batch, got {image.dtype} {tuple(image.shape)}")
    if tuple(params.shape) != (image.shape[0], 6):
        raise ValueError(f"need (B, 6) = ({image.shape[0]}, 6) augmentation draws, got {tuple(params.shape)}")
    out = _rotate_groups(image, params[:, 0].detach().round().to("cpu", torch.long))
    flags = params[:, 1:4].to(image.device) > 0.5
    for column, dim in enumerate((2, 3, 4)):
        out = torch.where(flags[:, column].view(-1, 1, 1, 1, 1), out.flip(dim), out)
    dtype = torch.promote_types(image.dtype, torch.float32)  # a half image is rescaled in float32, then cast back
    scale, shift = params[:, 4:6].to(image.device, dtype).view(-1, 2, 1, 1, 1, 1).unbind(1)
    return (out * (1 + scale) + shift).to(image.dtype)


def _to_tensors(image_key: str, mask_keys: Sequence[str]) -> list:
    """Plain tensors (no metadata): the image as float32, masks as uint8 (keeps small integer label ids)."""
    steps = [EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False)]
    if mask_keys:
        steps.append(EnsureTyped(keys=list(mask_keys), dtype=torch.uint8, track_meta=False))
    return steps


def train_transforms(
    image_key: str = "image",
    mask_keys: Sequence[str] = (),
    text_keys: Sequence[str] = (),
    laterality: str = "swap",
    rotate_prob: float = 0.5,
    flip_d_prob: float = 0.1,
    flip_h_prob: float = 0.1,
    flip_w_prob: float = 0.1,
    scale_prob: float = 0.5,
    scale_factors: float = 0.1,
    shift_prob: float = 0.5,
    shift_offsets: float = 0.1,
    on_device: bool = False,
) -> Compose:
    """The training augmentation of M3D-LaMed, with laterality-safe flips.

    Spatial steps act on the image and every mask with the same draw; intensity jitter acts on the image only.
    Boxes should be computed from the augmented mask, after this chain.

    Args:
        image_key: key of the (C, D, H, W) image.
        mask_keys: keys of (C, D, H, W) masks that must follow the image; they must be present in every sample.
        text_keys: keys whose text names sides ("left kidney"); may be missing from a sample.
        laterality: ``"swap"`` flips each axis with its probability and swaps "left"/"right" in ``text_keys`` when
            the flips mirror the anatomy (:class:`RandMirrord`); ``"off"`` never flips (quarter turns stay).
        rotate_prob: probability of 1–3 quarter turns in the H–W (axial) plane.
        flip_d_prob, flip_h_prob, flip_w_prob: flip probabilities along D, H and W.
        scale_prob, scale_factors: intensity v ← v·(1 + f), f ~ U(−scale_factors, scale_factors).
        shift_prob, shift_offsets: intensity v ← v + o, o ~ U(−shift_offsets, shift_offsets).
        on_device: draw here but leave the image to :func:`apply_augmentation` after collation (masks and text are
            still augmented here): one :class:`RandDeviceAugmentd` replaces the image steps, and each sample gains
            ``"augmentation"``, its draw.

    Raises:
        ValueError: for an unknown ``laterality`` or a probability outside [0, 1].
    """
    if on_device:  # RandDeviceAugmentd checks the settings
        draw = RandDeviceAugmentd(
            image_key, mask_keys=mask_keys, text_keys=text_keys, laterality=laterality, rotate_prob=rotate_prob,
            flip_d_prob=flip_d_prob, flip_h_prob=flip_h_prob, flip_w_prob=flip_w_prob, scale_prob=scale_prob,
            scale_factors=scale_factors, shift_prob=shift_prob, shift_offsets=shift_offsets,
        )
        return Compose([draw, *_to_tensors(image_key, mask_keys)])
    _check_settings(laterality, rotate_prob=rotate_prob, flip_d_prob=flip_d_prob, flip_h_prob=flip_h_prob,
                    flip_w_prob=flip_w_prob, scale_prob=scale_prob, shift_prob=shift_prob)
    spatial_keys = [image_key, *mask_keys]
    steps = [RandRotate90d(keys=spatial_keys, prob=rotate_prob, max_k=3, spatial_axes=(_AXIS_H, _AXIS_W))]
    if laterality == "swap":
        steps.append(RandMirrord(keys=spatial_keys, text_keys=text_keys,
                                 flip_probs=(flip_d_prob, flip_h_prob, flip_w_prob)))
    steps += [
        RandScaleIntensityd(keys=image_key, factors=scale_factors, prob=scale_prob),
        RandShiftIntensityd(keys=image_key, offsets=shift_offsets, prob=shift_prob),
        *_to_tensors(image_key, mask_keys),
    ]
    return Compose(steps)


def eval_transforms(image_key: str = "image", mask_keys: Sequence[str] = ()) -> Compose:
    """Evaluation chain: type conversion only (float32 image, uint8 masks, no metadata), as published."""
    return Compose(_to_tensors(image_key, mask_keys))
