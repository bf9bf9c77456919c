import json

import pytest
import torch

from m3d_components.data.cap import CapDataset, load_report, read_cap_split
from m3d_components.data.errors import DataError


def test_reads_split_relative_to_json(cap_dataset):
    records = read_cap_split(cap_dataset, "train")
    assert [r["image"].name for r in records] == ["axial.npy", "axial.npy"]
    assert records[0]["image"].is_file() and records[1]["text_path"].parent.name == "001"
    assert len(read_cap_split(cap_dataset, "test100")) == 1


def test_unknown_split_and_missing_file(cap_dataset):
    with pytest.raises(DataError, match=r"no split 'validation'; the file has \['test', 'test100', 'train'\]"):
        read_cap_split(cap_dataset, "validation")
    (cap_dataset.parent / "ct/001/axial.npy").unlink()
    with pytest.raises(DataError, match=r"M3D_Cap.json\['train'\], row 1: image 'ct/001/axial.npy' not found"):
        read_cap_split(cap_dataset, "train")
    assert len(read_cap_split(cap_dataset, "train", skip_invalid=True)) == 1
    assert len(read_cap_split(cap_dataset, "train", check_files=False)) == 2


def test_malformed_json_and_entries(tmp_path):
    bad = tmp_path / "M3D_Cap.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_cap_split(bad, "train")
    bad.write_text(json.dumps({"train": [{"image": "a.npy"}]}))
    with pytest.raises(DataError, match=r"row 0: expected an object with 'image' and 'text'"):
        read_cap_split(bad, "train")


def test_report_rules(tmp_path):
    (tmp_path / "r.txt").write_text("Title:x\nstudy_findings:Liver cyst. Spleen normal. Kidneys normal.\n")
    assert load_report(tmp_path / "r.txt") == "Liver cyst. Spleen normal. Kidneys normal."
    assert load_report(tmp_path / "r.txt", max_words=4) == "Liver cyst. Spleen normal."
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(DataError, match="e.txt: report text is empty"):
        load_report(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        load_report(tmp_path / "b.txt")


def test_dataset_sample_and_deterministic_templates(cap_dataset):
    ds = CapDataset(read_cap_split(cap_dataset, "train"), seed=0)
    sample = ds[1]
    assert sample["task"] == "caption" and sample["answer"] == "Finding number 1. The liver is normal."
    assert isinstance(sample["image"], torch.Tensor) and sample["image"].shape == (1, 8, 16, 16)
    assert sample["question"] and sample["question"] == ds[1]["question"]
    questions = {CapDataset(ds.records, seed=s)[0]["question"] for s in range(20)}
    assert len(questions) > 3  # templates vary with the seed
