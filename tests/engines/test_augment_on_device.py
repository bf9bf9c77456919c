"""Device-side augmentation wiring: collators stack the draws, PrepareImageTextBatch applies them after the move,
and each training bundle passes ``augment_on_device`` to ``train_transforms``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from m3d_components.data.transforms import AUGMENTATION_KEY, RandDeviceAugmentd, apply_augmentation
from m3d_components.engines.batch import PrepareImageTextBatch
from m3d_components.engines.collate import ImageTextCollator, InstructionCollator
from m3d_components.engines.instruct import PrepareInstructionBatch
from m3d_components.engines.settings import check_settings
from m3d_components.models.lamed import lamed_tokenizer

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SHAPE = (1, 2, 4, 4)
DRAWS = torch.tensor([[1, 0, 1, 0, 0.1, -0.05], [0, 1, 0, 1, 0, 0.02], [3, 0, 0, 0, -0.08, 0]])


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    """The tiny Llama's BPE tokenizer with the LaMed tokens, as the instruction bundles use it."""
    return lamed_tokenizer(llama_dir)


def _samples(draws: torch.Tensor | None = DRAWS) -> list[dict]:
    torch.manual_seed(0)
    samples = [{"image": torch.rand(SHAPE), "question": "Where?", "answer": "Here."} for _ in range(3)]
    if draws is not None:
        for sample, draw in zip(samples, draws):
            sample[AUGMENTATION_KEY] = draw
    return samples


def test_collators_stack_the_draws_when_samples_have_them(tokenizer):
    assert torch.equal(ImageTextCollator(text_key=None)(_samples())[AUGMENTATION_KEY], DRAWS)
    assert torch.equal(InstructionCollator(tokenizer, 2, keep=())(_samples())[AUGMENTATION_KEY], DRAWS)
    assert AUGMENTATION_KEY not in ImageTextCollator(text_key=None)(_samples(None))
    assert AUGMENTATION_KEY not in InstructionCollator(tokenizer, 2, keep=())(_samples(None))


def test_a_sample_without_a_draw_gets_the_identity_and_zero_images_get_none(tokenizer):
    samples = _samples()
    del samples[1][AUGMENTATION_KEY]
    stacked = ImageTextCollator(text_key=None)(samples)[AUGMENTATION_KEY]
    assert torch.equal(stacked[1], torch.zeros(6)) and torch.equal(stacked[[0, 2]], DRAWS[[0, 2]])
    assert AUGMENTATION_KEY not in InstructionCollator(tokenizer, 2, keep=(), zero_images=True)(_samples())


@pytest.mark.parametrize("prepare", [PrepareImageTextBatch(keys=()), PrepareInstructionBatch(keys=(), target_keys=())])
def test_prepare_batch_augments_the_moved_image(prepare):
    batch = ImageTextCollator(text_key=None)(_samples())
    image, _, _, _ = prepare(batch, torch.device("cpu"))
    assert torch.equal(image, apply_augmentation(batch["image"], DRAWS))
    assert not torch.equal(image, batch["image"])
    plain = ImageTextCollator(text_key=None)(_samples(None))
    assert torch.equal(prepare(plain, torch.device("cpu"))[0], plain["image"]), "no draws: the image as collated"


def _train_config(bundle: str, on_device: bool | None = None) -> ConfigParser:
    """The bundle's train.json, with ``augment_on_device`` overridden unless None."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    if on_device is not None:
        parser["augment_on_device"] = on_device
    return parser


@pytest.mark.parametrize("bundle", ["clip_pretrain", "lamed_instruct", "lamed_seg"])
def test_bundles_pass_augment_on_device_to_train_transforms(bundle):
    assert _train_config(bundle)["augment_on_device"] is False, "off unless asked"
    keys = ["train#preprocessing"] + (["train#seg_preprocessing"] if bundle != "clip_pretrain" else [])
    schema = BUNDLES / bundle / "configs" / "settings_schema.json"
    for on_device in (False, True):
        parser = _train_config(bundle, on_device)
        for key in keys:
            first = parser.get_parsed_content(key).transforms[0]
            assert isinstance(first, RandDeviceAugmentd) == on_device, (key, on_device)
        assert check_settings(parser.get_parsed_content("settings"), schema)["augment_on_device"] is on_device
    assert json.loads(schema.read_text())["properties"]["augment_on_device"]["type"] == "boolean"
