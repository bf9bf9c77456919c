"""Small files in the published M3D formats, written per test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHAPE = (1, 8, 16, 16)
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def write_volume(path: Path, seed: int = 0, shape=SHAPE, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).random(shape).astype(np.float32)
    x.flat[0], x.flat[1] = 0.0, 1.0
    np.save(path, x.astype(dtype))
    return path


VQA_HEADER = ["", "Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
              "Answer", "Answer Choice"]


def vqa_row(image: str, qtype=1, letter="B", answer="Coronal") -> dict:
    choices = {"A": "Axial", "B": "Coronal", "C": "Sagittal", "D": "Oblique"}
    choices[letter] = answer
    return {"Image Path": image, "Text": "A report.", "Question Type": qtype, "Question": "Which plane is shown?",
            **{f"Choice {c}": v for c, v in choices.items()}, "Answer": answer, "Answer Choice": letter}


@pytest.fixture
def cap_dataset(tmp_path: Path) -> Path:
    """Three cases in the M3D-Cap layout; returns the split JSON."""
    entries = []
    for i in range(3):
        write_volume(tmp_path / f"ct/{i:03d}/axial.npy", seed=i)
        (tmp_path / f"ct/{i:03d}/text.txt").write_text(f"Finding number {i}. The liver is normal.")
        entries.append({"image": f"ct/{i:03d}/axial.npy", "text": f"ct/{i:03d}/text.txt"})
    (tmp_path / "M3D_Cap.json").write_text(json.dumps({"train": entries[:2], "test": entries[2:], "test100": entries[2:]}))
    return tmp_path / "M3D_Cap.json"


@pytest.fixture
def vqa_csv(tmp_path: Path) -> Path:
    write_volume(tmp_path / "ct/000/axial.npy")
    rows = [vqa_row("ct/000/axial.npy", qtype=t, letter="ABCD"[t % 4], answer=f"answer {t}") for t in range(1, 6)]
    path = tmp_path / "M3D_VQA_test.csv"
    pd.DataFrame(rows).to_csv(path)  # default index → the published unnamed first column
    return path


@pytest.fixture
def seg_dataset(tmp_path: Path) -> Path:
    """One dataset code with two classes: class 0 present, class 1 a negative; returns the per-dataset JSON."""
    write_volume(tmp_path / "0000/case1/image.npy")
    mask = np.zeros(SHAPE, dtype=bool)
    mask[0, 2:5, 3:9, 4:12] = True
    (tmp_path / "0000/case1/masks").mkdir(parents=True)
    np.save(tmp_path / "0000/case1/masks/mask_0.npy", mask)
    np.save(tmp_path / "0000/case1/masks/mask_1.npy", np.zeros((1, 1, 1, 1), dtype=np.int8))
    spec = {
        "name": "toy", "labels": {"0": "background", "1": "left kidney", "2": "spleen"},
        "train": [{"image": "0000/case1/image.npy", "label": f"0000/case1/masks/mask_{i}.npy"} for i in range(2)],
        "test": [],
    }
    (tmp_path / "0000/0000.json").write_text(json.dumps(spec))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"0000": ["left kidney", "spleen"]}))
    terms = {"left kidney": ["A bean-shaped organ on the left that filters blood."],
             "right kidney": ["A bean-shaped organ on the right that filters blood."],
             "spleen": ["An organ in the left upper abdomen that filters old red cells."]}
    (tmp_path / "term_dictionary.json").write_text(json.dumps(terms))
    return tmp_path / "0000/0000.json"


@pytest.fixture
def refseg_csv(tmp_path: Path) -> Path:
    write_volume(tmp_path / "s0000/ct.npy")
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0, 1:4, 2:6, 2:6] = 1
    labels[0, 4:7, 8:12, 8:14] = 2
    np.save(tmp_path / "s0000/mask.npy", labels)
    rows = [{"Image": "s0000/ct.npy", "Mask": "s0000/mask.npy", "Mask_ID": i, "Question_Type": i - 1,
             "Question": f"Where is region {i}?", "Answer": "It is here: [SEG]."} for i in (1, 2)]
    path = tmp_path / "M3D_RefSeg_test.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
