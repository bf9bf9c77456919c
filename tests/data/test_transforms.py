from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandFlipd

from m3d_components.data.transforms import RandLateralFlipd, eval_transforms, swap_laterality, train_transforms

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


def test_laterality_off_never_flips_w():
    settings = {**NO_AUGMENTATION, "flip_w_prob": 1.0}
    chain = train_transforms(mask_keys=["seg"], text_keys=["text"], laterality="off", **settings)
    assert not any(isinstance(t, RandFlipd) and t.flipper.spatial_axis == 2 for t in chain.transforms)
    sample = _sample(text="left lung")
    for seed in range(5):
        out = _run(chain, sample, seed)
        np.testing.assert_array_equal(out["image"].numpy(), sample["image"])
        assert out["text"] == "left lung"


def test_lateral_flip_draw_rate_follows_prob():
    flip = RandLateralFlipd(keys="image", text_keys="text", prob=0.3)
    flip.set_random_state(0)
    texts = [flip({"image": np.zeros(SHAPE, np.float32), "text": "left"})["text"] for _ in range(400)]
    assert 0.2 < texts.count("right") / len(texts) < 0.4


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
