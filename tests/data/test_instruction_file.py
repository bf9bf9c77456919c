"""Segmentation instructions: generated from image–mask pairs, read back, validated, and fed to LaMed datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3d_components.data.boxes import format_box, mask_to_box, normalize_box
from m3d_components.data.errors import DataError
from m3d_components.data.instruct import TEXT_KEYS, instruction_datasets
from m3d_components.data.instruction_file import InstructionFileDataset, instruction_file, read_instruction_file
from m3d_components.data.transforms import train_transforms
from m3d_components.data.validate import validate_data
from m3d_components.engines.generate import generate_seg_instructions


@pytest.fixture
def generated(seg_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "instructions"
    generate_seg_instructions(seg_dataset.parents[1], out, splits=("train",))
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generation_writes_every_task_for_positives_and_negatives(seg_dataset, tmp_path):
    out = tmp_path / "instructions"
    summary = generate_seg_instructions(seg_dataset.parents[1], out, splits=("train", "test"))
    train = summary["splits"]["train"]
    # one positive (left kidney) and one negative (spleen) mask, six instructions each (definitions in the
    # dataset's term dictionary)
    assert (train["masks"], train["positive"], train["negative"]) == (2, 1, 1)
    assert all(train[f"{t}/{v}"] == 2 for t, v in [("rec", "label"), ("rec", "definition"), ("reg", "label"),
                                                    ("reg", "definition"), ("ss", "label"), ("res", "definition")])
    assert summary["splits"]["test"]["masks"] == 0 and not summary["no_definition"]
    lines = _lines(instruction_file(out, "train"))
    positive = [r for r in lines if r["box"] is not None]
    mask = np.load(seg_dataset.parent / "case1/masks/mask_0.npy")
    assert {tuple(r["box"]) for r in positive} == {tuple(normalize_box(mask_to_box(mask), mask.shape[1:]))}
    assert {r["class_name"] for r in positive} == {"left kidney"}
    assert all((out / r["image"]).resolve() == (seg_dataset.parent / "case1/image.npy").resolve() for r in lines)
    definitions = {r["question"] for r in lines if r["task"] == "res"}
    assert any("bean-shaped organ on the left" in q for q in definitions)  # the dataset's own dictionary wins


def test_generation_is_deterministic_for_a_seed(seg_dataset, tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        generate_seg_instructions(seg_dataset.parents[1], out, splits=("train",), seed=seed)
    text = [instruction_file(o, "train").read_text() for o in (a, b, c)]
    assert text[0] == text[1] != text[2]


def test_generated_files_validate_and_a_tampered_box_is_caught(generated):
    report = validate_data("m3d-instructions", generated)
    assert report.problems == [] and report.records == 12
    path = instruction_file(generated, "train")
    lines = _lines(path)
    row = next(i for i, r in enumerate(lines) if r["task"] == "reg" and r["box"])
    shifted = [round(v + 0.05, 3) for v in lines[row]["box"]]
    lines[row]["question"] = lines[row]["question"].replace(format_box(lines[row]["box"]), format_box(shifted))
    lines[row]["box"] = shifted
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    problems = validate_data("m3d-instructions", path).problems
    assert len(problems) == 1 and f"row {row}" in problems[0] and "stored box" in problems[0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("mask"), "missing key"),
        (lambda r: r.update(task="vqa"), "'task' is 'vqa'"),
        (lambda r: r.update(box=[0.1, 0.2]), "6 numbers"),
        (lambda r: r.update(answer="It is somewhere."), "does not contain its box"),
        (lambda r: r.update(box=None), "writes a box"),
    ],
)
def test_reader_names_the_line_and_the_problem(generated, edit, message):
    path = instruction_file(generated, "train")
    lines = _lines(path)
    row = next(i for i, r in enumerate(lines) if r["task"] == "rec" and r["box"])
    edit(lines[row])
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataError, match=message) as err:
        read_instruction_file(path)
    assert f"row {row}" in str(err.value)


def test_seg_count_must_match_positivity(generated):
    path = instruction_file(generated, "train")
    lines = _lines(path)
    row = next(i for i, r in enumerate(lines) if r["task"] == "ss" and r["box"] is None)
    lines[row]["answer"] += " [SEG]"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataError, match=r"has 1 \[SEG\]; expected no \[SEG\]"):
        read_instruction_file(path)
    assert len(read_instruction_file(path, skip_invalid=True)) == len(lines) - 1


def test_dataset_rewrites_the_box_and_the_side_after_augmentation(generated):
    records = read_instruction_file(instruction_file(generated, "train"), tasks=["rec"])
    flip = train_transforms(mask_keys=["seg"], text_keys=TEXT_KEYS, rotate_prob=0, flip_d_prob=0, flip_h_prob=1.0,
                            flip_w_prob=1.0, scale_prob=0, shift_prob=0)
    dataset = InstructionFileDataset(records, "rec", transform=flip, seed=0)
    positive = next(i for i, r in enumerate(records) if r["box"] is not None)
    sample = dataset[positive]
    box = normalize_box(mask_to_box(sample["seg"].numpy()), sample["seg"].shape[1:])
    assert box != records[positive]["box"]  # the flips moved it
    assert format_box(box) in sample["answer"] and format_box(records[positive]["box"]) not in sample["answer"]
    assert np.allclose(sample["box"].numpy(), box, atol=1e-6)
    assert sample["class_name"] == "left kidney"  # two flips are a half turn: the anatomy keeps its sides
    mirror = train_transforms(mask_keys=["seg"], text_keys=TEXT_KEYS, rotate_prob=0, flip_d_prob=0, flip_h_prob=0,
                              flip_w_prob=1.0, scale_prob=0, shift_prob=0)
    assert InstructionFileDataset(records, "rec", transform=mirror, seed=0)[positive]["class_name"] == "right kidney"
    with pytest.raises(ValueError, match="records of task"):
        InstructionFileDataset(records, "reg")


def test_lamed_datasets_read_the_generated_files(generated):
    datasets = instruction_datasets(["rec", "reg"], "train", seg_instructions_dir=generated)
    assert {k: len(v) for k, v in datasets.items()} == {"rec": 4, "reg": 4}
    sample = datasets["reg"][0]
    assert sample["task"] == "reg" and sample["seg"].shape == (1, 8, 16, 16)


def test_an_unreadable_volume_is_named(seg_dataset, tmp_path):
    (seg_dataset.parent / "case1/image.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match=r"image.npy: cannot read as .npy"):
        generate_seg_instructions(seg_dataset.parents[1], tmp_path / "out", splits=("train",))


def test_lamed_datasets_build_ss_res_on_the_fly_and_refseg_from_its_csv(seg_dataset, refseg_csv):
    root = seg_dataset.parents[1]
    datasets = instruction_datasets(["ss", "res", "refseg"], "train", seg_jsons=[seg_dataset],
                                    term_dictionary=root / "term_dictionary.json", refseg_csv=refseg_csv,
                                    data_root=root, seed=0)
    assert {k: len(v) for k, v in datasets.items()} == {"ss": 2, "res": 2, "refseg": 2}
    ss, res, refseg = datasets["ss"][0], datasets["res"][0], datasets["refseg"][1]
    assert "[SEG]" in ss["answer"] and "left kidney" in ss["question"] and ss["seg"].sum() == 3 * 6 * 8
    assert "bean-shaped organ" in res["question"] and "[SEG]" in res["answer"]
    assert "[SEG]" not in datasets["ss"][1]["answer"] and not datasets["ss"][1]["seg"].any()  # the negative
    assert refseg["task"] == "refseg" and refseg["seg"].sum() == 3 * 4 * 6
    with pytest.raises(ValueError, match="task 'refseg' needs refseg_csv"):
        instruction_datasets(["refseg"], "train")
    boxes = instruction_datasets(["rec", "reg"], "train", seg_jsons=[seg_dataset],
                                 term_dictionary=root / "term_dictionary.json", data_root=root, seed=0)
    assert {k: len(v) for k, v in boxes.items()} == {"rec": 4, "reg": 4}  # 2 masks × (class name, definition)
    assert "bean-shaped organ" in boxes["rec"][2]["question"] and "<bx_start>" in boxes["rec"][0]["answer"]
