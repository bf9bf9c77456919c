from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Flip, Rotate90

from m3d_components.data.transforms import (
    AUGMENTATION_KEY,
    RandDeviceAugmentd,
    RandMirrord,
    apply_augmentation,
    eval_transforms,
    swap_laterality,
    train_transforms,
)

SHAPE = (1, 4, 6, 6)  # D differs from H = W, so a rotation in the wrong plane would change the shape
NO_AUGMENTATION = dict(
    rotate_prob=0.0, flip_d_prob=0.0, flip_h_prob=0.0, flip_w_prob=0.0, scale_prob=0.0, shift_prob=0.0
)


def _sample(text=None) -> dict:
    """Image with a unique value per voxel, a random mask and optional text."""
    rng = np.random.default_rng(0)
    image = rng.permutation(np.prod(SHAPE)).reshape(SHAPE).astype(np.float32)
    sample = {"image": image, "seg": rng.random(SHAPE) > 0.7}
    if text is not None:
        sample["text"] = text
    return sample


def _run(transform, sample: dict, seed: int = 0) -> dict:
    transform.set_random_state(seed)
    return transform(dict(sample))


def test_swap_laterality_words():
    assert swap_laterality("Left kidney and RIGHT lung, left-sided") == "Right kidney and LEFT lung, right-sided"
    assert swap_laterality("leftover rightmost bright") == "leftover rightmost bright"


@pytest.mark.parametrize("seed", range(40))
def test_image_and_mask_share_every_spatial_draw(seed):
    sample = _sample()
    flips = {"flip_d_prob": 0.5, "flip_h_prob": 0.5, "flip_w_prob": 0.5}
    chain = train_transforms(mask_keys=["seg"], **{**NO_AUGMENTATION, "rotate_prob": 0.5, **flips})
    out = _run(chain, sample, seed)
    marked = np.isin(out["image"].numpy(), sample["image"][sample["seg"]])
    np.testing.assert_array_equal(out["seg"].numpy().astype(bool), marked)


def test_rotation_stays_in_the_axial_plane():
    sample = _sample()
    out = _run(train_transforms(**{**NO_AUGMENTATION, "rotate_prob": 1.0}), sample)
    assert tuple(out["image"].shape) == SHAPE
    assert not np.array_equal(out["image"].numpy(), sample["image"])
    for d in range(SHAPE[1]):  # every slice keeps its own voxels: only H and W moved
        assert set(out["image"][0, d].flatten().tolist()) == set(sample["image"][0, d].flatten().tolist())


def test_forced_lateral_flip_mirrors_w_and_swaps_text():
    text = {"question": "Is the Left kidney enlarged?", "classes": ["left kidney", "right lung"]}
    sample = {**_sample(), **text, "label": "right"}
    text_keys = ["question", "classes", "answer"]
    chain = train_transforms(mask_keys=["seg"], text_keys=text_keys, **{**NO_AUGMENTATION, "flip_w_prob": 1.0})
    out = _run(chain, sample)
    np.testing.assert_array_equal(out["image"].numpy(), sample["image"][..., ::-1])
    np.testing.assert_array_equal(out["seg"].numpy(), sample["seg"][..., ::-1])
    assert out["question"] == "Is the Right kidney enlarged?"
    assert out["classes"] == ["right kidney", "left lung"]
    assert out["label"] == "right", "keys not listed in text_keys are untouched"
    assert "answer" not in out


def test_probability_zero_changes_nothing():
    sample = _sample(text="left adrenal gland")
    out = _run(train_transforms(mask_keys=["seg"], text_keys=["text"], **NO_AUGMENTATION), sample)
    np.testing.assert_array_equal(out["image"].numpy(), sample["image"])
    np.testing.assert_array_equal(out["seg"].numpy(), sample["seg"])
    assert out["text"] == "left adrenal gland"


def test_laterality_off_never_flips():
    settings = {**NO_AUGMENTATION, "flip_d_prob": 1.0, "flip_h_prob": 1.0, "flip_w_prob": 1.0}
    chain = train_transforms(mask_keys=["seg"], text_keys=["text"], laterality="off", **settings)
    assert not any(isinstance(t, RandMirrord) for t in chain.transforms)
    sample = _sample(text="left lung")
    for seed in range(5):
        out = _run(chain, sample, seed)
        np.testing.assert_array_equal(out["image"].numpy(), sample["image"])
        assert out["text"] == "left lung"


def test_mirror_draw_rates_follow_the_probabilities():
    mirror = RandMirrord(keys="image", text_keys="text", flip_probs=(0.0, 0.0, 0.3))
    mirror.set_random_state(0)
    texts = [mirror({"image": np.zeros(SHAPE, np.float32), "text": "left"})["text"] for _ in range(400)]
    assert 0.2 < texts.count("right") / len(texts) < 0.4
    with pytest.raises(ValueError, match="one probability per axis"):
        RandMirrord(keys="image", flip_probs=(0.1, 0.1))


@pytest.mark.parametrize("flips", [(1, 0, 0), (0, 1, 0), (1, 1, 0), (1, 1, 1), (0, 1, 1)])
def test_every_mirror_swaps_the_sides_and_one_volume_never_gets_two_labels(flips):
    """A 180° axial turn after an H flip is the W-flipped volume: both must name the sides alike, and so must every
    odd number of flips; an even number (a rotation) keeps the words."""
    sample = {"image": np.random.default_rng(1).random(SHAPE, dtype=np.float32), "text": "left kidney"}
    mirror = RandMirrord(keys="image", text_keys="text", flip_probs=flips)
    out = mirror(dict(sample))
    expected = sample["image"]
    for axis, flag in zip((1, 2, 3), flips):
        expected = np.flip(expected, axis) if flag else expected
    np.testing.assert_array_equal(np.asarray(out["image"]), expected)
    assert out["text"] == ("right kidney" if sum(flips) % 2 else "left kidney")

    turned = np.rot90(np.flip(sample["image"], 2), 2, axes=(2, 3))  # H flip, then a half turn
    w_flipped = RandMirrord(keys="image", text_keys="text", flip_probs=(0, 0, 1))(dict(sample))
    np.testing.assert_array_equal(turned, np.asarray(w_flipped["image"]))
    h_then_turn = train_transforms(text_keys=["text"], **{**NO_AUGMENTATION, "rotate_prob": 1.0, "flip_h_prob": 1.0})
    for seed in range(20):  # whatever the turn, an H flip is one mirror
        assert _run(h_then_turn, sample, seed)["text"] == w_flipped["text"] == "right kidney"


@pytest.mark.parametrize("seed", range(8))
def test_intensity_jitter_touches_only_the_image(seed):
    sample = _sample()
    sample["seg"] = sample["seg"].astype(np.float32)  # a float mask would visibly change if jitter reached it
    chain = train_transforms(mask_keys=["seg"], **{**NO_AUGMENTATION, "scale_prob": 1.0, "shift_prob": 1.0})
    out = _run(chain, sample, seed)
    assert not np.allclose(out["image"].numpy(), sample["image"])
    np.testing.assert_array_equal(out["seg"].numpy(), sample["seg"])


def test_output_types():
    sample = _sample()
    for chain in (train_transforms(mask_keys=["seg"]), eval_transforms(mask_keys=["seg"])):
        out = _run(chain, sample)
        assert type(out["image"]) is torch.Tensor and not isinstance(out["image"], MetaTensor)
        assert out["image"].dtype == torch.float32 and out["seg"].dtype == torch.uint8
        assert tuple(out["image"].shape) == SHAPE == tuple(out["seg"].shape)


def test_eval_is_type_conversion_only():
    sample = _sample(text="left")
    out = eval_transforms(mask_keys=["seg"])(dict(sample))
    np.testing.assert_array_equal(out["image"].numpy(), sample["image"])
    assert out["text"] == "left"


def test_seeded_chain_is_reproducible():
    chain = train_transforms(mask_keys=["seg"])
    first, second = _run(chain, _sample(), 11), _run(chain, _sample(), 11)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["seg"], second["seg"])


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"laterality": "keep"}, "laterality"), ({"flip_w_prob": 1.5}, "flip_w_prob")]
)
def test_bad_settings_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_transforms(**kwargs)


# --- device-side augmentation ---------------------------------------------------------------------------------------

DEVICE_SHAPE = (2, 3, 5, 5)  # two channels, D != H = W: quarter turns are legal, a wrong-plane turn changes the shape
ROTATIONS = {k: Rotate90(k, spatial_axes=(1, 2)) for k in (1, 2, 3)}
FLIPS = (Flip(spatial_axis=0), Flip(spatial_axis=1), Flip(spatial_axis=2))


def _random_draws(rng: np.random.Generator, batch: int) -> torch.Tensor:
    """(batch, 6) draws over every k and flip combination, with intensity jitter on about half the samples."""
    turns = rng.integers(0, 4, batch)
    flips = rng.integers(0, 2, (batch, 3))
    jitter = rng.uniform(-0.1, 0.1, (batch, 2)) * rng.integers(0, 2, (batch, 2))
    return torch.tensor(np.column_stack([turns, flips, jitter]), dtype=torch.float32)


def _monai_one(volume: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """The reference: MONAI's deterministic array transforms on one (C, D, H, W) volume, in the CPU chain's order."""
    turns, *flips, scale, shift = draw.tolist()
    out = ROTATIONS[int(turns)](volume) if turns else volume
    for flip, flag in zip(FLIPS, flips):
        out = flip(out) if flag else out
    return torch.as_tensor(out) * (1 + scale) + shift


@pytest.mark.parametrize("seed", range(20))
def test_apply_augmentation_matches_monai_per_sample(seed):
    rng = np.random.default_rng(seed)
    images = torch.as_tensor(rng.standard_normal((16, *DEVICE_SHAPE)), dtype=torch.float32)
    draws = _random_draws(rng, 16)
    spatial = draws.clone()
    spatial[:, 4:] = 0
    moved, augmented = apply_augmentation(images, spatial), apply_augmentation(images, draws)
    assert moved.dtype == augmented.dtype == torch.float32 and moved.shape == images.shape
    for i in range(len(images)):
        assert torch.equal(moved[i], _monai_one(images[i], spatial[i])), draws[i]
        torch.testing.assert_close(augmented[i], _monai_one(images[i], draws[i]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_apply_augmentation_on_the_gpu_matches_the_cpu():
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.standard_normal((64, *DEVICE_SHAPE)), dtype=torch.float32)
    draws = _random_draws(rng, 64)
    on_gpu = apply_augmentation(images.cuda(), draws)  # draws stay on the CPU, as PrepareImageTextBatch passes them
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), apply_augmentation(images, draws))
    torch.testing.assert_close(apply_augmentation(images.cuda(), draws.cuda()).cpu(), on_gpu.cpu())


def test_apply_augmentation_checks_its_inputs():
    square, flat = torch.zeros(2, *DEVICE_SHAPE), torch.zeros(2, 1, 3, 4, 6)
    turn = torch.tensor([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    with pytest.raises(ValueError, match="H == W"):
        apply_augmentation(flat, turn)
    assert torch.equal(apply_augmentation(flat, torch.zeros(2, 6)), flat), "no quarter turn: any H, W"
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        apply_augmentation(square, torch.zeros(3, 6))
    with pytest.raises(ValueError, match="0–3"):
        apply_augmentation(square, turn * 4)
    with pytest.raises(ValueError, match="floating-point"):
        apply_augmentation(square.to(torch.uint8), turn)


def _device_sample() -> dict:
    """Image and a label mask holding the same unique voxel ids, so any misalignment shows as a different value."""
    ids = np.random.default_rng(0).permutation(np.prod(SHAPE)).reshape(SHAPE)
    return {"image": ids.astype(np.float32), "seg": ids.astype(np.uint8), "text": "left kidney", "label": "left"}


def test_device_chain_mask_and_text_follow_the_device_image():
    """The mask written on the CPU equals what apply_augmentation does to the same volume: image and mask align."""
    sample = _device_sample()
    flips = {"flip_d_prob": 0.5, "flip_h_prob": 0.5, "flip_w_prob": 0.5}
    chain = train_transforms(mask_keys=["seg"], text_keys=["text"], on_device=True, **flips)
    chain.set_random_state(3)
    seen = set()
    for _ in range(60):
        out = chain(dict(sample))
        draw = out[AUGMENTATION_KEY]
        assert draw.dtype == torch.float32 and draw.shape == (6,)
        np.testing.assert_array_equal(out["image"].numpy(), sample["image"])  # the image waits for the device
        spatial = torch.cat([draw[:4], torch.zeros(2)])[None]
        on_device = apply_augmentation(torch.as_tensor(sample["image"])[None], spatial)[0]
        assert out["seg"].dtype == torch.uint8 and torch.equal(out["seg"].float(), on_device)
        mirrored = int(draw[1:4].sum()) % 2 == 1
        assert out["text"] == ("right kidney" if mirrored else "left kidney") and out["label"] == "left"
        seen.add((int(draw[0]), int(draw[3])))
    assert seen == {(k, w) for k in range(4) for w in (0, 1)}, "every turn count with and without a W flip"


def test_device_draws_are_seeded_and_follow_the_probabilities():
    settings = dict(rotate_prob=0.5, flip_d_prob=0.1, flip_h_prob=0.2, flip_w_prob=0.3, scale_prob=0.6,
                    scale_factors=0.2, shift_prob=0.25, shift_offsets=0.05)
    augment = RandDeviceAugmentd(**settings)

    def draws(seed: int, n: int = 4000) -> np.ndarray:
        augment.set_random_state(seed)
        return np.stack([augment({"image": np.zeros(1)})[AUGMENTATION_KEY].numpy() for _ in range(n)])

    first = draws(0)
    np.testing.assert_array_equal(first, draws(0))
    assert not np.array_equal(first, draws(1))
    turns, flips, scale, shift = first[:, 0], first[:, 1:4], first[:, 4], first[:, 5]
    assert abs((turns > 0).mean() - 0.5) < 0.04
    assert all(abs((turns == k).mean() - 0.5 / 3) < 0.04 for k in (1, 2, 3))
    np.testing.assert_allclose(flips.mean(0), [0.1, 0.2, 0.3], atol=0.04)
    assert set(np.unique(flips)) <= {0.0, 1.0}
    assert abs((scale != 0).mean() - 0.6) < 0.04 and np.abs(scale).max() <= 0.2
    assert abs((shift != 0).mean() - 0.25) < 0.04 and np.abs(shift).max() <= 0.05
    assert np.abs(scale).max() > 0.15 and np.abs(shift).max() > 0.04, "the ranges are used, not just their middle"


def test_device_chain_seeded_by_compose_and_laterality_off_never_flips_w():
    chain = train_transforms(mask_keys=["seg"], on_device=True, laterality="off", flip_w_prob=1.0)
    first = [_run(chain, _device_sample(), seed)[AUGMENTATION_KEY] for seed in range(30)]
    again = [_run(chain, _device_sample(), seed)[AUGMENTATION_KEY] for seed in range(30)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(draw[3] for draw in first)
    assert isinstance(chain.transforms[0], RandDeviceAugmentd)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"laterality": "keep"}, "laterality"), ({"scale_prob": -0.1}, "scale_prob")]
)
def test_device_augmentation_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_transforms(on_device=True, **kwargs)
    with pytest.raises(ValueError, match=match):
        RandDeviceAugmentd(**kwargs)
