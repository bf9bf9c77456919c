import json

import numpy as np
import pandas as pd
import pytest

from m3d_components.data.validate import validate_data

from ..launch import run_module
from .conftest import vqa_row


def test_clean_datasets_pass(cap_dataset, vqa_csv, seg_dataset, refseg_csv):
    assert validate_data("m3d-cap", cap_dataset).summary() == {"format": "m3d-cap", "records": 4, "valid": 4, "errors": 0}
    assert validate_data("m3d-vqa", vqa_csv).summary()["valid"] == 5
    seg = validate_data("m3d-seg", seg_dataset.parents[1], root=seg_dataset.parents[1])
    assert seg.summary() == {"format": "m3d-seg", "records": 2, "valid": 2, "errors": 0}
    assert validate_data("m3d-refseg", refseg_csv).summary()["valid"] == 2


def test_problems_are_listed_per_file_and_row(tmp_path, vqa_csv):
    np.save(tmp_path / "ct/000/axial.npy", np.full((1, 8, 16, 16), np.nan, np.float32))
    table = pd.read_csv(vqa_csv, index_col=0)
    table.loc[len(table)] = vqa_row("ct/missing.npy")
    table.loc[len(table)] = {**vqa_row("ct/000/axial.npy"), "Question Type": 9}
    table.to_csv(vqa_csv)
    report = validate_data("m3d-vqa", vqa_csv)
    assert report.summary() == {"format": "m3d-vqa", "records": 7, "valid": 0, "errors": 3}
    text = "\n".join(report.problems)
    assert "row 5: Image Path 'ct/missing.npy' not found" in text
    assert "row 6: 'Question Type' is 9, expected 1–5" in text
    assert "axial.npy: volume holds" in text  # the shared volume is reported once
    assert validate_data("m3d-vqa", vqa_csv, text_only=True).summary()["errors"] == 1  # files unchecked


def test_seg_mask_problems(seg_dataset):
    root = seg_dataset.parents[1]
    np.save(root / "0000/case1/masks/mask_0.npy", np.zeros((1, 8, 16, 16), bool))
    report = validate_data("m3d-seg", seg_dataset, root=root)
    assert report.summary()["errors"] == 1 and "mask is empty" in report.problems[0]


def test_expected_shape(cap_dataset):
    report = validate_data("m3d-cap", cap_dataset, image_shape=(1, 32, 256, 256))
    assert report.summary()["valid"] == 0 and "wrong shape" in report.problems[0]


def test_missing_index_file(tmp_path):
    report = validate_data("m3d-refseg", tmp_path / "none.csv")
    assert report.summary() == {"format": "m3d-refseg", "records": 0, "valid": 0, "errors": 1}
    with pytest.raises(ValueError, match="format must be one of"):
        validate_data("m3d-ct", tmp_path)


def test_cli_exit_status_and_summary_line(vqa_csv):
    run = ["validate-data", "m3d-vqa", str(vqa_csv)]
    ok = run_module("m3d_components.cli", *run)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1]) == {"format": "m3d-vqa", "records": 5, "valid": 5, "errors": 0}
    (vqa_csv.parent / "ct/000/axial.npy").unlink()
    bad = run_module("m3d_components.cli", *run)
    lines = bad.stdout.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 6 and json.loads(lines[-1])["errors"] == 5
