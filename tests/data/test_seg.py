import json

import numpy as np
import pytest

from m3d_components.data.boxes import parse_boxes
from m3d_components.data.errors import DataError
from m3d_components.data.seg import SegTaskDataset, read_label_names, read_seg_split, read_term_dictionary
from m3d_components.data.tokens import SEG_TOKEN


def test_records_with_class_names(seg_dataset):
    records = read_seg_split(seg_dataset, "train", data_root=seg_dataset.parents[1])
    assert [(r["class_index"], r["class_name"]) for r in records] == [(0, "left kidney"), (1, "spleen")]
    assert records[0]["dataset"] == "0000" and records[0]["layout"] == "per_class"
    assert read_label_names(seg_dataset.parents[1] / "dataset_info.json") == {"0000": ["left kidney", "spleen"]}


def test_old_split_key_names(seg_dataset):
    spec = json.loads(seg_dataset.read_text())
    spec["training"] = spec.pop("train")
    seg_dataset.write_text(json.dumps(spec))
    assert len(read_seg_split(seg_dataset, "train", data_root=seg_dataset.parents[1])) == 2


def test_bad_specs(seg_dataset):
    root = seg_dataset.parents[1]
    spec = json.loads(seg_dataset.read_text())
    spec["train"][1]["label"] = "0000/case1/masks/mask_5.npy"
    np.save(root / "0000/case1/masks/mask_5.npy", np.zeros((1, 1, 1, 1), np.int8))
    seg_dataset.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"row 1: mask index 5 but only 2 classes"):
        read_seg_split(seg_dataset, "train", data_root=root)
    with pytest.raises(DataError, match="no split 'holdout'"):
        read_seg_split(seg_dataset, "holdout", data_root=root)
    assert read_seg_split(seg_dataset, "validation", data_root=root) == []  # falls back to the (empty) test list
    seg_dataset.write_text(json.dumps({"labels": {"0": "background", "2": "x"}, "train": []}))
    with pytest.raises(DataError, match="without gaps"):
        read_seg_split(seg_dataset, "train")


def test_tasks_positive_and_negative(seg_dataset):
    root = seg_dataset.parents[1]
    records = read_seg_split(seg_dataset, "train", data_root=root)
    terms = read_term_dictionary(root / "term_dictionary.json")
    ss = SegTaskDataset(records, "ss", seed=0)
    pos, neg = ss[0], ss[1]
    assert pos["seg"].shape == (1, 8, 16, 16) and pos["seg"].sum() == 3 * 6 * 8
    assert SEG_TOKEN in pos["answer"] and "left kidney" in pos["question"]
    assert SEG_TOKEN not in neg["answer"] and not neg["seg"].any()
    rec = SegTaskDataset(records, "rec", seed=0)
    box = parse_boxes(rec[0]["answer"])[0]
    assert box == [0.25, 0.188, 0.25, 0.5, 0.5, 0.688]
    np.testing.assert_allclose(rec[0]["box"].numpy(), box, atol=1e-6)
    assert parse_boxes(rec[1]["answer"]) == [] and np.isnan(rec[1]["box"].numpy()).all()
    reg = SegTaskDataset(records, "reg", seed=0)[0]
    assert parse_boxes(reg["question"])[0] == box and "left kidney" in reg["answer"]
    res = SegTaskDataset(records, "res", term_dictionary=terms, seed=0)[0]
    assert "bean-shaped" in res["question"] and SEG_TOKEN in res["answer"]


def test_definition_required_and_raw_layout_rejected(seg_dataset, tmp_path):
    records = read_seg_split(seg_dataset, "train", data_root=seg_dataset.parents[1])
    with pytest.raises(ValueError, match="needs a term_dictionary"):
        SegTaskDataset(records, "res")
    with pytest.raises(ValueError, match="task must be one of"):
        SegTaskDataset(records, "detect")
    raw = [{**records[0], "layout": "sparse"}]
    with pytest.raises(DataError, match="m3d prepare m3d-seg"):
        SegTaskDataset(raw, "ss")


def test_average_box_of_positive_masks(seg_dataset):
    from m3d_components.data.seg import average_box

    records = read_seg_split(seg_dataset, "train", data_root=seg_dataset.parents[1])
    # the one positive mask spans D 2–4, H 3–8, W 4–11 of (8, 16, 16); the negative adds nothing
    assert average_box(records, (1, 8, 16, 16)) == [0.25, 0.188, 0.25, 0.5, 0.5, 0.688]
    with pytest.raises(DataError, match="no positive mask"):
        average_box(records[1:], (1, 8, 16, 16))
