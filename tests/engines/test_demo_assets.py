import json

import pytest

from m3d_components.engines.demo import ensure_demo_data


def _manifest(path, **change):
    manifest = {"size": [32, 64, 64], "seed": 0, "splits": {"train": 800, "validation": 40, "test": 100}, **change}
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_existing_corpus_with_the_same_settings_is_reused(tmp_path):
    _manifest(tmp_path / "demo")
    assert ensure_demo_data(tmp_path / "demo") == str((tmp_path / "demo").resolve())
    _manifest(tmp_path / "small", splits={"train": 6, "validation": 2, "test": 3})
    assert ensure_demo_data(tmp_path / "small", n_train=6, n_val=2, n_test=3)


@pytest.mark.parametrize("change", [{"seed": 1}, {"size": [32, 256, 256]}, {"splits": {"train": 6, "validation": 2, "test": 3}}])
def test_a_corpus_made_with_other_settings_is_refused(tmp_path, change):
    _manifest(tmp_path / "demo", **change)
    with pytest.raises(ValueError, match="choose another folder or delete it"):
        ensure_demo_data(tmp_path / "demo")
