"""prepare_m3d_cap on a tiny raw M3D-Cap tree of real PNG/JPEG files written with PIL."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3d_components.data.prepare_cap import ascii_name, prepare_m3d_cap, series_to_volume
from m3d_components.data.report import extract_findings
from m3d_components.data.volume import load_volume

REPORT = (
    "title: Liver mass\nstudy_findings:\nA 3 cm hypodense mass in segment VII of the liver.\ndiscussion: Likely HCC.\n"
)


def _slice(value: int, shape: tuple[int, int] = (40, 48)) -> Image.Image:
    """A dark frame with a bright square whose brightness encodes the slice index."""
    array = np.zeros(shape, np.uint8)
    array[8:32, 10:40] = value
    return Image.fromarray(array)


def _series(folder: Path, indices: range, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True)
    for i in indices:
        _slice(20 + 15 * i).save(folder / f"{i}{suffix}")
    return folder


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    case1 = raw / "ct_case" / "000001"
    axial = _series(case1 / "Axial_bone_window", range(1, 12))
    _slice(200, (20, 20)).save(axial / "3.png")  # odd size → dropped
    _slice(200).save(axial / "notes.png")  # not an integer index → dropped
    _series(case1 / "Coronal_Pöschl", range(5), ".jpeg")
    (case1 / "text.txt").write_text(REPORT)
    case2 = raw / "ct_quizze" / "000002"
    portal = _series(case2 / "Axial_C+_portal_venous_phase", range(4))
    (portal / "4.png").write_bytes(b"\x89PNG truncated")  # unreadable → dropped
    (case2 / "text.txt").write_text("Small right pleural effusion.")
    _series(raw / "ct_quizze" / "000003" / "Axial", range(4))  # no report → case skipped
    _series(raw / "ct_quizze" / "000004" / "Sagittal", range(1))  # one slice → series and case skipped
    (raw / "ct_quizze" / "000004" / "text.txt").write_text(REPORT)
    return raw


def test_layout_counts_and_split(raw, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = prepare_m3d_cap(raw, out, spatial_size=(8, 16, 16), split=(0.0, 0.5, 0.5), seed=3)
    assert summary["cases"] == 2 and summary["series"] == 3
    assert (summary["skipped_slices"], summary["skipped_series"], summary["skipped_cases"]) == (3, 1, 2)
    for name in ("3.png", "notes.png", "4.png", "000003", "000004"):
        assert name in caplog.text
    splits = json.loads((out / "M3D_Cap.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == summary["splits"]
    assert sum(summary["splits"].values()) == 3 and summary["splits"]["train"] == 0
    images = sorted(pair["image"] for pairs in splits.values() for pair in pairs)
    assert images == [
        "ct_case/000001/Axial_bone_window.npy",
        "ct_case/000001/Coronal_Poschl.npy",
        "ct_quizze/000002/Axial_C+_portal_venous_phase.npy",
    ]
    for pair in (p for pairs in splits.values() for p in pairs):
        assert load_volume(out / pair["image"]).shape == (1, 8, 16, 16)
        assert pair["text"] == str(Path(pair["image"]).parent / "text.txt")
    assert (out / "ct_case/000001/text.txt").read_text().strip() == extract_findings(REPORT)
    assert not (out / "ct_quizze/000004").exists()


def test_split_is_seeded_and_keeps_cases_whole(raw, tmp_path):
    prepare_m3d_cap(raw, tmp_path / "a", spatial_size=(4, 8, 8), split=(0.5, 0.0, 0.5), seed=7)
    prepare_m3d_cap(raw, tmp_path / "b", spatial_size=(4, 8, 8), split=(0.5, 0.0, 0.5), seed=7)
    a, b = ((tmp_path / d / "M3D_Cap.json").read_text() for d in "ab")
    assert a == b
    split_of = {}
    for split, pairs in json.loads(a).items():
        for pair in pairs:
            split_of.setdefault(Path(pair["image"]).parent.as_posix(), set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values())


@pytest.mark.slow
def test_worker_processes_give_the_same_output(raw, tmp_path):
    one = prepare_m3d_cap(raw, tmp_path / "a", spatial_size=(4, 8, 8))
    two = prepare_m3d_cap(raw, tmp_path / "b", spatial_size=(4, 8, 8), workers=2)
    assert {**one, "split_file": ""} == {**two, "split_file": ""}
    assert (tmp_path / "a/M3D_Cap.json").read_text() == (tmp_path / "b/M3D_Cap.json").read_text()
    for name in ("ct_case/000001/Coronal_Poschl.npy", "ct_quizze/000002/Axial_C+_portal_venous_phase.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))


def test_series_volume_sorted_by_integer_index(raw):
    volume, skips = series_to_volume(raw / "ct_case/000001/Axial_bone_window", spatial_size=(10, 24, 30))
    assert volume.shape == (1, 10, 24, 30) and volume.dtype == np.float32
    means = volume[0].mean(axis=(1, 2))
    assert np.all(np.diff(means) > 0)  # 1, 2, …, 10, 11, not 1, 10, 11, 2, …
    assert sorted(Path(f).name for f, _ in skips) == ["3.png", "notes.png"]


def test_ascii_name():
    assert ascii_name("Coronal_Pöschl") == "Coronal_Poschl"
    assert ascii_name("Axial C+ arterial") == "Axial C+ arterial"


def test_bad_arguments(raw, tmp_path):
    with pytest.raises(ValueError, match="split"):
        prepare_m3d_cap(raw, tmp_path / "out", split=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="workers"):
        prepare_m3d_cap(raw, tmp_path / "out", spatial_size=(4, 8, 8), workers=0)
