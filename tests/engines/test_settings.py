import json
from pathlib import Path

import pytest

from m3d_components.engines.settings import SettingsError, check_settings

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
