"""MONAI dictionary transform chains for training and evaluation samples.

The training chain is the published M3D augmentation (quarter turns in the axial plane, flips, intensity jitter),
with one correction: in the canonical (C, D, H, W) layout W runs along the patient's left–right axis, so a W flip
turns a left kidney into what looks like a right one. :class:`RandLateralFlipd` therefore swaps "left" and "right"
in the sample's text in the same draw that mirrors the image and masks. In-plane rotations are proper rotations
(no mirror), so anatomy keeps its handedness and the text stays as it is.
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
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import ensure_tuple

__all__ = ["LATERALITY_MODES", "RandLateralFlipd", "eval_transforms", "swap_laterality", "train_transforms"]

LATERALITY_MODES = ("swap", "off")
_AXIS_D, _AXIS_H, _AXIS_W = 0, 1, 2  # spatial axes of (C, D, H, W); W is patient left–right
_LATERAL_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OPPOSITE = {"left": "right", "right": "left"}


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


class RandLateralFlipd(RandFlipd):
    """Mirror the patient left–right (W) axis and swap "left"/"right" in the text, in one random draw.

    A plain W flip would keep labels such as "left kidney" on what now looks like a right kidney; swapping the
    words keeps image and text consistent. Text keys absent from a sample are skipped.

    Args:
        keys: image and mask keys, all flipped together; arrays are channel-first (C, D, H, W).
        text_keys: keys whose strings (or lists / dicts of strings) get their laterality words swapped.
        prob: probability of the flip.
        allow_missing_keys: don't raise when an image/mask key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        text_keys: KeysCollection = (),
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob=prob, spatial_axis=_AXIS_W, allow_missing_keys=allow_missing_keys)
        self.text_keys = ensure_tuple(text_keys)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = super().__call__(data, lazy=lazy)
        if self._do_transform:
            for key in self.text_keys:
                if key in d:
                    d[key] = _swap_nested(d[key])
        return d


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


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
) -> Compose:
    """The training augmentation of M3D-LaMed, with laterality-safe left–right flips.

    Spatial steps act on the image and every mask with the same draw; intensity jitter acts on the image only.
    Boxes should be computed from the augmented mask, after this chain.

    Args:
        image_key: key of the (C, D, H, W) image.
        mask_keys: keys of (C, D, H, W) masks that must follow the image; they must be present in every sample.
        text_keys: keys whose text names sides ("left kidney"); may be missing from a sample.
        laterality: ``"swap"`` flips W with probability ``flip_w_prob`` and swaps "left"/"right" in ``text_keys``;
            ``"off"`` never flips W.
        rotate_prob: probability of 1–3 quarter turns in the H–W (axial) plane.
        flip_d_prob, flip_h_prob, flip_w_prob: flip probabilities along D, H and W.
        scale_prob, scale_factors: intensity v ← v·(1 + f), f ~ U(−scale_factors, scale_factors).
        shift_prob, shift_offsets: intensity v ← v + o, o ~ U(−shift_offsets, shift_offsets).

    Raises:
        ValueError: for an unknown ``laterality`` or a probability outside [0, 1].
    """
    if laterality not in LATERALITY_MODES:
        raise ValueError(f"laterality must be one of {LATERALITY_MODES}, got {laterality!r}")
    probabilities = {
        "rotate_prob": rotate_prob,
        "flip_d_prob": flip_d_prob,
        "flip_h_prob": flip_h_prob,
        "flip_w_prob": flip_w_prob,
        "scale_prob": scale_prob,
        "shift_prob": shift_prob,
    }
    for name, value in probabilities.items():
        _check_probability(name, value)
    spatial_keys = [image_key, *mask_keys]
    steps = [
        RandRotate90d(keys=spatial_keys, prob=rotate_prob, max_k=3, spatial_axes=(_AXIS_H, _AXIS_W)),
        RandFlipd(keys=spatial_keys, prob=flip_d_prob, spatial_axis=_AXIS_D),
        RandFlipd(keys=spatial_keys, prob=flip_h_prob, spatial_axis=_AXIS_H),
    ]
    if laterality == "swap":
        steps.append(RandLateralFlipd(keys=spatial_keys, text_keys=text_keys, prob=flip_w_prob))
    steps += [
        RandScaleIntensityd(keys=image_key, factors=scale_factors, prob=scale_prob),
        RandShiftIntensityd(keys=image_key, offsets=shift_offsets, prob=shift_prob),
        *_to_tensors(image_key, mask_keys),
    ]
    return Compose(steps)


def eval_transforms(image_key: str = "image", mask_keys: Sequence[str] = ()) -> Compose:
    """Evaluation chain: type conversion only (float32 image, uint8 masks, no metadata), as published."""
    return Compose(_to_tensors(image_key, mask_keys))
