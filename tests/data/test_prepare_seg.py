"""prepare_m3d_seg on a tiny raw M3D-Seg release (real CSR .npz) and on a Decathlon folder of the ITK T1 + labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.sparse

from m3d_components.data.errors import DataError
from m3d_components.data.ingest import load_sidecar, prepare_mask
from m3d_components.data.masks import NEGATIVE_SHAPE, load_class_mask
from m3d_components.data.prepare_seg import prepare_m3d_seg
from m3d_components.data.seg import read_seg_split
from m3d_components.data.volume import load_volume, minmax_normalize

ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
T1 = ITK / "KmeansTest_T1UCharRaw.nii.gz"
LABELS = ITK / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"
XYZ = (12, 10, 8)
CLASSES = ["liver", "spleen", "tumour"]


def _raw_case(root: Path, case: str, seed: int) -> dict[str, str]:
    """image.npy (1, X, Y, Z) and a CSR mask (3, X·Y·Z) with the dense shape in its name; class 2 is absent."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.3, (1, *XYZ)).astype(np.float32)
    image[0, 0, 0, 0] = -1.0  # the only minimum voxel, so the foreground box is the whole grid
    mask = np.zeros((3, *XYZ), np.int32)
    mask[0, 2:9, 3:8, 1:4] = 1  # an organ, brighter than its surroundings
    mask[1, 5:7, 1:3, 5:7] = 1
    image[0][mask[0] > 0] += 1.0
    folder = root / "0000" / case
    folder.mkdir(parents=True)
    np.save(folder / "image.npy", image)
    name = f"mask_({3}, {XYZ[0]}, {XYZ[1]}, {XYZ[2]}).npz"
    scipy.sparse.save_npz(folder / name, scipy.sparse.csr_matrix(mask.reshape(3, -1)))
    return {"image": f"0000/{case}/image.npy", "label": f"0000/{case}/{name}"}


@pytest.fixture
def raw_release(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    spec = {
        "name": "toy",
        "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(CLASSES)}},
        "training": [_raw_case(root, "case_a", 0), {"image": "0000/gone/image.npy", "label": "0000/gone/m.npz"}],
        "validation": [_raw_case(root, "case_b", 1)],
    }
    (root / "0000" / "0000.json").write_text(json.dumps(spec))
    return root


def test_raw_release_layout_and_negatives(raw_release, tmp_path):
    out = tmp_path / "out"
    summary = prepare_m3d_seg(raw_release, out, spatial_size=XYZ[::-1])  # (Z, Y, X): resize is the identity
    assert summary["cases"] == 2 and summary["skipped_cases"] == 1
    assert (summary["masks"], summary["negatives"]) == (6, 2)
    spec = json.loads((out / "0000" / "0000.json").read_text())
    assert spec["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "tumour"}
    assert [e["label"] for e in spec["train"]] == [f"0000/case_a/masks/mask_{i}.npy" for i in range(3)]
    assert {e["image"] for e in spec["test"]} == {"0000/case_b/image.npy"}
    assert json.loads((out / "dataset_info.json").read_text()) == {"0000": CLASSES}

    raw_image = np.load(raw_release / "0000/case_a/image.npy")
    raw_mask = scipy.sparse.load_npz(next((raw_release / "0000/case_a").glob("mask_*.npz"))).toarray()
    expected_mask = np.swapaxes(raw_mask.reshape(3, *XYZ), 1, 3) > 0
    image = load_volume(out / "0000/case_a/image.npy")
    np.testing.assert_allclose(image, np.swapaxes(minmax_normalize(raw_image), 1, 3), atol=1e-6)
    for i in range(2):
        mask = np.load(out / f"0000/case_a/masks/mask_{i}.npy")
        assert mask.dtype == bool and mask.shape == image.shape
        np.testing.assert_array_equal(mask[0], expected_mask[i])
    negative = np.load(out / "0000/case_a/masks/mask_2.npy")
    assert negative.shape == NEGATIVE_SHAPE and negative.dtype == np.int8 and not negative.any()


def test_prepared_layout_reads_from_the_seg_folder_or_a_lamed_dataset_dir(raw_release, tmp_path):
    """The bundles read M3D-Seg with ``data_root=dataset_dir`` (the folder above ``M3D_Seg``), `m3d validate-data`
    without a root: both find the prepared files, whose paths start at the M3D-Seg folder."""
    dataset_dir = tmp_path / "M3D"
    prepare_m3d_seg(raw_release, dataset_dir / "M3D_Seg", spatial_size=XYZ[::-1])
    split_file = dataset_dir / "M3D_Seg/0000/0000.json"
    for root in (None, dataset_dir):
        records = read_seg_split(split_file, "train", root)
        assert [r["image"] for r in records] == [dataset_dir / "M3D_Seg/0000/case_a/image.npy"] * 3
    (dataset_dir / "M3D_Seg/0000/case_a/masks/mask_1.npy").unlink()
    with pytest.raises(DataError, match=r"label '0000/case_a/masks/mask_1.npy' not found under data_root "
                                        rf"'{dataset_dir}' or '{dataset_dir / 'M3D_Seg'}'"):
        read_seg_split(split_file, "train", dataset_dir)


def test_command_line_options_reach_the_conversion(raw_release, tmp_path):
    from ..launch import run_module

    out = tmp_path / "M3D_Seg"
    result = run_module("m3d_components.cli", "prepare", "m3d-seg", str(raw_release), str(out), "--size", "8,10,12",
                        "--codes", "0000", "--cache-dtype", "float16", "--workers", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["cases"] == 2
    assert np.load(out / "0000/case_a/image.npy").dtype == np.float16
    wrong = run_module("m3d_components.cli", "prepare", "m3d-seg", str(raw_release), str(tmp_path / "x"),
                       "--codes", "0001")
    assert wrong.returncode == 2 and "0001" in wrong.stderr and "Traceback" not in wrong.stderr


def test_raw_release_resized_masks_stay_on_the_organ(raw_release, tmp_path):
    out = tmp_path / "out"
    prepare_m3d_seg(raw_release, out, spatial_size=(16, 20, 24), cache_dtype="float16")
    image = load_volume(out / "0000/case_b/image.npy")
    organ = load_class_mask(out / "0000/case_b/masks/mask_0.npy", image.shape)
    assert organ.any() and image[organ].min() > np.median(image[~organ]) + 0.1


@pytest.mark.skipif(not T1.is_file(), reason="Debian package insighttoolkit5-examples not installed")
def test_decathlon_folder_of_nifti(tmp_path):
    folder = tmp_path / "Task01_T1"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case in ("t1_a", "t1_b"):
        (folder / "imagesTr" / f"{case}.nii.gz").symlink_to(T1)
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(LABELS)
    names = {"0": "background", **{str(v): f"tissue {v}" for v in range(1, 7)}, "7": "absent"}
    spec = {
        "labels": names,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ("t1_a", "t1_b")],
        "test": ["./imagesTs/t1_c.nii.gz"],  # unlabelled, as in Decathlon releases
    }
    (folder / "dataset.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    summary = prepare_m3d_seg(folder, out, spatial_size=(16, 32, 32), test_fraction=0.5)
    assert summary["datasets"]["Task01_T1"] == {"cases": 2, "train": 7, "test": 7}
    assert summary["skipped_cases"] == 1 and summary["negatives"] == 2
    written = json.loads((out / "Task01_T1" / "Task01_T1.json").read_text())
    case = Path(written["train"][0]["image"]).parent
    sidecar = load_sidecar(out / case / "image.json")
    assert sidecar["orientation"] == "IPL" and sidecar["window"]["name"] == "percentile"
    assert load_volume(out / case / "image.npy").shape == (1, 16, 32, 32)
    labels = prepare_mask(LABELS, sidecar)
    for value in range(1, 7):
        np.testing.assert_array_equal(np.load(out / case / "masks" / f"mask_{value - 1}.npy"), labels == value)
    assert np.load(out / case / "masks" / "mask_6.npy").shape == NEGATIVE_SHAPE
    assert nib.load(str(T1)).shape == tuple(sidecar["source_shape"])


def test_no_dataset_found(tmp_path):
    from m3d_components.data.errors import DataError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no M3D-Seg dataset") as info:
        prepare_m3d_seg(tmp_path / "empty", tmp_path / "out")
    assert info.value.source == str(tmp_path / "empty")
