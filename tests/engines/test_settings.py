import json
from pathlib import Path

import pytest

from m3d_components.engines.settings import (
    SettingsError, check_command_line, check_overrides, check_settings, recipe, require_batches,
)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _clip_settings(**change):
    settings = {"dataset_dir": "/data", "text_encoder": "/models/bert", "image_size": [32, 256, 256],
                "patch_size": [4, 16, 16], "batch_size": 32, "epochs": 100, "learning_rate": 1e-4, "precision": "bf16"}
    return {**settings, **change}


def test_valid_settings_pass():
    schema = BUNDLES / "clip_pretrain/configs/settings_schema.json"
    assert check_settings(_clip_settings(), schema)["batch_size"] == 32


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 1}, "batch_size: 1 is less than the minimum of 2"),
        ({"precision": "fp8"}, "precision: 'fp8' is not one of"),
        ({"image_size": [32, 256]}, "image_size: .* is too short"),
        ({"epoch": 3}, "Additional properties are not allowed"),
    ],
)
def test_rejected_settings_name_the_key(change, message):
    with pytest.raises(SettingsError, match=message):
        check_settings(_clip_settings(**change), BUNDLES / "clip_pretrain/configs/settings_schema.json")


def test_every_bundle_schema_is_valid_json_schema():
    import jsonschema

    for schema in BUNDLES.glob("*/configs/settings_schema.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(schema.read_text()))


CLIP_SCHEMA = BUNDLES / "clip_pretrain/configs/settings_schema.json"
LAMED = BUNDLES / "lamed_instruct/configs"


def test_command_line_values_as_fire_reads_them():
    """`--image_size 32,256,256` arrives as a tuple (an array); `--resume false` and `--pretrained_vit null` arrive as
    text, which the error says how to write."""
    assert check_settings(_clip_settings(image_size=(32, 256, 256)), CLIP_SCHEMA)["image_size"] == (32, 256, 256)
    with pytest.raises(SettingsError, match=r"resume: 'false' is not of type 'boolean' \(on the command line write "
                                            r"False: 'false' is read as a string\)"):
        check_settings(_clip_settings(resume="false"), CLIP_SCHEMA)
    with pytest.raises(SettingsError, match=r"pretrained_vit: 'null' is text, not null \(on the command line write "
                                            r"None"):
        check_settings(_clip_settings(pretrained_vit="null"), CLIP_SCHEMA)
    assert check_settings(_clip_settings(head_norm="none"), CLIP_SCHEMA)["head_norm"] == "none"  # a real option


def test_interval_and_per_task_settings_are_checked():
    with pytest.raises(SettingsError, match="checkpoint_interval: 0 is less than the minimum of 1"):
        check_settings(_clip_settings(checkpoint_interval=0), CLIP_SCHEMA)
    settings = json.loads((LAMED / "settings_schema.json").read_text())["required"]
    lamed = {key: None for key in settings} | {"stage": 1, "dataset_dir": "/d", "llm_path": "/m", "image_size": [32, 256, 256],
                                              "patch_size": [4, 16, 16], "tasks": ["caption"], "trainable": [],
                                              "batch_size": 8, "epochs": 1}
    lamed = {k: v for k, v in lamed.items() if v is not None}
    with pytest.raises(SettingsError, match=r"val_samples_per_task: 'vqa_opne' is not one of"):
        check_settings({**lamed, "val_samples_per_task": {"vqa_opne": 50}}, LAMED / "settings_schema.json")
    with pytest.raises(SettingsError, match=r"eval_samples_per_task: 'refseg' is not one of"):
        check_settings({**lamed, "eval_samples_per_task": {"refseg": 5}}, LAMED / "settings_schema.json")
    with pytest.raises(SettingsError, match=r"val_split: 'valid' is not one of"):
        check_settings(_clip_settings(val_split="valid"), CLIP_SCHEMA)


def test_a_stage_without_a_recipe_is_named():
    recipes = json.loads((LAMED / "train.json").read_text())["recipes"]
    assert recipe(recipes, 2)["lora"] is True
    with pytest.raises(SettingsError, match=r"stage: 3 is not one of the stages with a recipe \(1, 2\)"):
        recipe(recipes, 3)


def test_a_loader_without_a_full_batch_stops_the_run():
    from torch.utils.data import DataLoader

    require_batches(DataLoader(list(range(8)), batch_size=4, drop_last=True))
    with pytest.raises(SettingsError, match=r"no batch: 3 samples and batch_size 4, .*raise samples_per_epoch"):
        require_batches(DataLoader(list(range(3)), batch_size=4, drop_last=True))


def _argv(*options):
    files = f"['{LAMED / 'train.json'}','{LAMED / 'demo.json'}']"
    return ["monai.bundle", "run", "--config_file", files, *options]


def test_misspelled_overrides_are_refused():
    check_command_line(_argv("--stage", "2", "--learning_rate=1e-4", "--train#dataloader#num_workers", "0",
                             "--lora", "False", "--resume"))
    with pytest.raises(SettingsError, match=r"lerning_rate: not a key of these configs \(did you mean learning_rate"):
        check_command_line(_argv("--lerning_rate", "1e-5"))
    with pytest.raises(SettingsError, match=r"train#dataloder#num_workers: not a key"):
        check_command_line(_argv("--train#dataloder#num_workers", "0"))
    check_command_line(["pytest", "run", "--lerning_rate", "1"])  # not a bundle run: nothing to check
    with pytest.raises(SettingsError, match=r"unknown settings for lamed_instruct.*\n  llm_pth: .*did you mean "
                                            r"llm_path"):
        check_overrides([LAMED / "train.json", LAMED / "inference.json"], ["image", "llm_pth"], "lamed_instruct")


def test_missing_inputs_are_listed_and_the_split_is_checked(tmp_path):
    from m3d_components.engines.settings import require_files

    (tmp_path / "w.safetensors").touch()
    require_files(weights=tmp_path / "w.safetensors", image=None)
    with pytest.raises(FileNotFoundError, match=r"missing inputs:\n  image: .*scan.nii.gz does not exist"):
        require_files(weights=tmp_path / "w.safetensors", image=tmp_path / "scan.nii.gz")
    with pytest.raises(SettingsError, match=r"eval_split: 'val' is not one of \['train', 'validation', 'test'\]"):
        check_settings(_clip_settings(eval_split="val"), CLIP_SCHEMA)
