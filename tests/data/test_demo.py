"""The synthetic demo corpus: determinism, formats, balance, image-dependence of the answers, learnability floor."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m3d_components.data.boxes import mask_to_box
from m3d_components.data.demo import (
    CLASSES,
    LESION_ORGANS,
    PHASES,
    PLANES,
    REGION_ORGANS,
    REGIONS,
    CaseSpec,
    make_demo_data,
    render_phantom,
)
from m3d_components.data.demo.design import BLOCK, design_split
from m3d_components.data.masks import NEGATIVE_SHAPE
from m3d_components.data.tokens import SEG_TOKEN
from m3d_components.data.volume import load_volume

SIZE = (32, 64, 64)
VQA_HEADER = ",Image Path,Text,Question Type,Question,Choice A,Choice B,Choice C,Choice D,Answer,Answer Choice"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """Two design blocks of training cases, one of test cases: enough to check balance, small enough to be fast."""
    out = tmp_path_factory.mktemp("demo")
    manifest = make_demo_data(out, n_train=2 * BLOCK, n_val=4, n_test=BLOCK, size=SIZE, seed=7)
    return out, manifest


@pytest.fixture(scope="module")
def attributes(corpus) -> dict:
    return json.loads((corpus[0] / "demo_attributes.json").read_text())


def _vqa(out: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(out / f"M3D_VQA_{split}.csv", index_col=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    make_demo_data(tmp_path / "a", n_train=3, n_val=1, n_test=2, size=(16, 32, 32), seed=3)
    make_demo_data(tmp_path / "b", n_train=3, n_val=1, n_test=2, size=(16, 32, 32), seed=3)
    make_demo_data(tmp_path / "c", n_train=3, n_val=1, n_test=2, size=(16, 32, 32), seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a["images/train/train_00000.npy"] != c["images/train/train_00000.npy"]
    assert not any(k.endswith(".tmp") for k in a)


def test_volumes_are_canonical(corpus, attributes):
    out, manifest = corpus
    assert manifest["splits"] == {"train": 2 * BLOCK, "validation": 4, "test": BLOCK}
    for case in attributes.values():
        raw = np.load(out / case["image"])
        assert raw.dtype == np.float32 and raw.shape == (1, *SIZE)
        x = load_volume(out / case["image"], expected_shape=(1, *SIZE))
        assert x.min() == 0.0 and x.max() == 1.0


def test_cap_json_and_reports(corpus, attributes):
    out, _ = corpus
    cap = json.loads((out / "M3D_Cap.json").read_text())
    assert set(cap) == {"train", "validation", "test", "test100"}
    assert cap["test100"] == cap["test"][:100]
    texts = []
    for entry in cap["train"] + cap["validation"] + cap["test"]:
        assert (out / entry["image"]).is_file()
        texts.append((out / entry["text"]).read_text())
    assert len(set(texts)) >= 0.95 * len(texts), "captions should be nearly unique (ITR needs it)"
    by_image = {c["image"]: c for c in attributes.values()}
    for entry, text in zip(cap["test"], texts[-BLOCK:]):
        case = by_image[entry["image"]]
        assert case["plane"] in text.lower() and case["region"] in text
        if case["lesion"]:
            lesion = case["lesion"]
            assert f"{lesion['size_mm'] / 10:.1f} cm" in text and lesion["density"] in text
            assert f"{lesion['part']} p" in text and lesion["organ"] in text
        else:
            assert "no focal" in text.lower()


def test_vqa_csv_format(corpus):
    out, _ = corpus
    for split in ("train", "val", "test"):
        assert (out / f"M3D_VQA_{split}.csv").read_text().splitlines()[0] == VQA_HEADER
    table = _vqa(out, "train")
    assert set(table["Question Type"]) == {1, 2, 3, 4, 5}
    for _, row in table.iterrows():
        assert row[f"Choice {row['Answer Choice']}"] == row["Answer"]
        choices = [row[f"Choice {L}"] for L in "ABCD"]
        assert len(set(choices)) == 4
        assert row["Answer"].lower() not in row["Question"].lower()
        assert (out / row["Image Path"]).is_file()


def test_vqa_letters_and_answers_are_balanced(corpus):
    out, manifest = corpus
    table = _vqa(out, "train")
    for qtype, rows in table.groupby("Question Type"):
        letters = Counter(rows["Answer Choice"])
        assert max(letters.values()) - min(letters.values()) <= 1, (qtype, letters)
        answers = Counter(rows["Answer"])
        assert max(answers.values()) <= 1.6 * min(answers.values()), (qtype, answers)
        tally = manifest["vqa"]["train"][str(qtype)]
        assert tally["letters"] == {L: letters[L] for L in "ABCD"} and tally["answers"] == dict(sorted(answers.items()))
    assert manifest["blind_accuracy"]["1"] == pytest.approx(1 / 3, abs=1e-3)
    assert manifest["blind_accuracy"]["2"] == pytest.approx(1 / 4, abs=1e-3)


def _option_prior(train: pd.DataFrame) -> dict[tuple, float]:
    """P(correct | shown as an option), per (question text, option text): the best image-free guess."""
    shown, right = Counter(), Counter()
    for _, row in train.iterrows():
        for L in "ABCD":
            shown[row["Question"], row[f"Choice {L}"]] += 1
        right[row["Question"], row["Answer"]] += 1
    return {k: right[k] / n for k, n in shown.items()}


def test_image_free_baselines_score_at_chance(corpus):
    out, manifest = corpus
    train, test = _vqa(out, "train"), _vqa(out, "test")
    prior = _option_prior(train)
    majority = train.groupby("Question")["Answer"].agg(lambda s: s.value_counts().index[0]).to_dict()
    letter = train["Answer Choice"].value_counts().index[0]
    hits = {"prior": [], "majority": [], "letter": []}
    for _, row in test.iterrows():
        choices = {L: row[f"Choice {L}"] for L in "ABCD"}
        best = max("ABCD", key=lambda L: (prior.get((row["Question"], choices[L]), 0.0), L))
        hits["prior"].append(best == row["Answer Choice"])
        hits["majority"].append(majority.get(row["Question"]) == row["Answer"])
        hits["letter"].append(letter == row["Answer Choice"])
    blind = np.mean([manifest["blind_accuracy"][str(t)] for t in test["Question Type"]])
    for name, h in hits.items():
        assert np.mean(h) <= blind + 0.1, (name, np.mean(h), blind)


def test_seg_layout_and_masks_match_attributes(corpus, attributes):
    out, _ = corpus
    root = out / "M3D_Seg"
    assert json.loads((root / "dataset_info.json").read_text()) == {"demo": list(CLASSES)}
    terms = json.loads((root / "term_dictionary.json").read_text())
    assert set(terms) == set(CLASSES) and all(len(v) >= 3 for v in terms.values())
    spec = json.loads((root / "demo/demo.json").read_text())
    assert spec["labels"] == {"0": "background", **{str(i + 1): c for i, c in enumerate(CLASSES)}}
    assert spec["numTrain"] == 2 * BLOCK and spec["numTest"] == BLOCK and spec["tensorImageSize"] == "4D"
    assert len(spec["train"]) == 2 * BLOCK * len(CLASSES) and len(spec["validation"]) == 4 * len(CLASSES)
    by_image = defaultdict(dict)
    for entry in spec["train"] + spec["validation"] + spec["test"]:
        by_image[entry["image"]][int(entry["label"].rsplit("_", 1)[1][:-4])] = np.load(out / entry["label"])
    for case in attributes.values():
        masks = by_image[case["image"]]
        present = {CLASSES[i] for i, m in masks.items() if m.shape != NEGATIVE_SHAPE}
        assert present == set(case["organs"]) | ({"lesion"} if case["lesion"] else set())
        assert set(case["organs"]) == set(REGION_ORGANS[case["region"]]) | {"aorta"}
        for i, m in masks.items():
            if m.shape == NEGATIVE_SHAPE:
                assert m.dtype == np.int8 and not m.any()
            else:
                assert m.dtype == bool and m.shape == (1, *SIZE) and m.any()
        if case["lesion"]:
            assert list(mask_to_box(masks[CLASSES.index("lesion")])) == case["lesion"]["box"]


def test_refseg_layout(corpus, attributes):
    out, _ = corpus
    table = pd.read_csv(out / "M3D_RefSeg_test.csv")
    assert list(table.columns) == ["Image", "Mask", "Mask_ID", "Question_Type", "Question", "Answer"]
    assert set(table["Question_Type"]) == {0, 1}
    assert all(a.count(SEG_TOKEN) == 1 for a in table["Answer"])
    for mask_path, rows in table.groupby("Mask"):
        labels = np.load(out / mask_path)
        assert labels.dtype == np.uint8 and labels.shape == (1, *SIZE)
        text = json.loads((out / mask_path).with_name("text.json").read_text())
        assert {int(k) for k in text} == set(np.unique(labels)) - {0} == set(rows["Mask_ID"])
    case = next(c for c in attributes.values() if c["split"] == "test" and c["lesion"])
    lesion_rows = table[(table["Image"] == case["image"]) & (table["Mask_ID"] == 1)]
    assert lesion_rows["Question"].str.contains(case["lesion"]["organ"]).any()


def test_lesions_are_big_and_contrasted(corpus, attributes):
    out, _ = corpus
    lesions = [c for c in attributes.values() if c["lesion"]]
    assert len(lesions) >= BLOCK
    for case in lesions:
        d0, h0, w0, d1, h1, w1 = case["lesion"]["box"]
        assert d1 - d0 + 1 >= 4 and h1 - h0 + 1 >= 8 and w1 - w0 + 1 >= 8, case
        assert d0 > 0 and h0 > 0 and w0 > 0 and d1 < SIZE[0] - 1 and h1 < SIZE[1] - 1 and w1 < SIZE[2] - 1
        image = np.load(out / case["image"])[0]
        case_dir = out / "M3D_Seg/demo" / Path(case["image"]).stem / "masks"
        lesion = np.load(case_dir / f"mask_{CLASSES.index('lesion')}.npy")[0]
        organ = np.load(case_dir / f"mask_{CLASSES.index(case['lesion']['organ'])}.npy")[0] & ~lesion
        contrast = image[lesion].mean() - image[organ].mean()
        assert abs(contrast) >= 0.2 and (contrast > 0) == (case["lesion"]["density"] == "hyperdense"), case


def _render(plane="axial", phase="portal venous", region="chest", seed=11):
    return render_phantom(CaseSpec(plane, phase, region), SIZE, np.random.default_rng(seed))


def _centroid(labels: np.ndarray, name: str) -> np.ndarray:
    return np.argwhere(labels == CLASSES.index(name) + 1).mean(0)


def test_plane_reslices_the_same_body():
    axial, coronal, sagittal = (_render(p).labels for p in PLANES)
    # Left lung towards higher W (patient left) in axial and coronal; towards higher D in sagittal.
    for labels in (axial, coronal):
        diff = _centroid(labels, "left lung") - _centroid(labels, "right lung")
        assert diff[2] > 15 and abs(diff[0]) < 3
    diff = _centroid(sagittal, "left lung") - _centroid(sagittal, "right lung")
    assert diff[0] > 8 and abs(diff[2]) < 3
    # The heart is anterior to the aorta: lower H in axial, lower D in coronal, lower W in sagittal.
    assert _centroid(axial, "heart")[1] < _centroid(axial, "aorta")[1] - 10
    assert _centroid(coronal, "heart")[0] < _centroid(coronal, "aorta")[0] - 5
    assert _centroid(sagittal, "heart")[2] < _centroid(sagittal, "aorta")[2] - 10


def _mean_in(ph, name: str) -> float:
    return float(ph.volume[0][ph.labels == CLASSES.index(name) + 1].mean())


def test_phase_changes_intensities_as_documented():
    upper = {p: _render(phase=p, region="upper abdomen") for p in PHASES}
    lower = {p: _render(phase=p, region="lower abdomen") for p in PHASES}
    aorta = [_mean_in(upper[p], "aorta") for p in ("non-contrast", "delayed", "portal venous", "arterial")]
    assert all(b - a > 0.05 for a, b in zip(aorta, aorta[1:])), aorta
    liver = {p: _mean_in(upper[p], "liver") for p in PHASES}
    assert liver["portal venous"] > max(v for p, v in liver.items() if p != "portal venous") + 0.1
    bladder = {p: _mean_in(lower[p], "bladder") for p in PHASES}
    assert bladder["delayed"] > max(v for p, v in bladder.items() if p != "delayed") + 0.3


def test_design_is_balanced():
    specs = design_split(3 * BLOCK, np.random.default_rng(0))
    counts = {name: Counter(getattr(s, name) for s in specs) for name in ("plane", "phase", "region", "density",
                                                                          "lesion_organ", "part")}
    assert counts["plane"] == {p: BLOCK for p in PLANES} and counts["phase"] == {p: 27 for p in PHASES}
    assert counts["region"] == {r: BLOCK for r in REGIONS}
    assert counts["density"] == {None: BLOCK, "hypodense": BLOCK, "hyperdense": BLOCK}
    assert counts["lesion_organ"] == {None: BLOCK, **{o: 12 for o in LESION_ORGANS}}
    assert counts["part"] == {None: BLOCK, "upper": 2 * BLOCK // 2, "lower": 2 * BLOCK // 2}


@pytest.mark.parametrize("kwargs, match", [
    ({"size": (8, 64, 64)}, r"size .*\(8, 64, 64\)"),
    ({"size": (32, 64)}, "three integers"),
    ({"n_train": 0}, "n_train must be at least 1"),
    ({"n_test": -1}, "n_test must be a non-negative integer, got -1"),
    ({"seed": -2}, "seed must be a non-negative integer, got -2"),
])
def test_bad_arguments_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_demo_data(tmp_path, **{"n_train": 1, "n_val": 0, "n_test": 0, **kwargs})
    assert not any(tmp_path.iterdir())


def test_case_spec_rejects_impossible_lesions():
    with pytest.raises(ValueError, match="cannot occur in region 'chest'"):
        CaseSpec("axial", "arterial", "chest", "liver", "hypodense", "upper")
    with pytest.raises(ValueError, match="lung lesions are solid"):
        CaseSpec("axial", "arterial", "chest", "left lung", "hypodense", "upper")
    with pytest.raises(ValueError, match="plane must be one of"):
        CaseSpec("oblique", "arterial", "chest")
