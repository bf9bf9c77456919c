"""Masks handed back to the user: NIfTI on the scan's own grid, its reported box, the overlay PNG, and the MONAI
transform chain (MONAI Label's path) agreeing with the sidecar path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from m3d_components.data.ingest import prepare_mask, prepare_volume, scan_transforms
from m3d_components.data.volume import load_volume
from m3d_components.engines.infer import describe_mask

ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
T1 = ITK / "KmeansTest_T1UCharRaw.nii.gz"
LABELS = ITK / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"
needs_itk = pytest.mark.skipif(not T1.is_file(), reason="Debian package insighttoolkit5-examples not installed")


@needs_itk
def test_mask_nifti_has_the_scan_grid_and_its_reported_box(tmp_path):
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=(32, 64, 64))
    volume = load_volume(tmp_path / "t1.npy", (1, 32, 64, 64))
    labels = prepare_mask(LABELS, sidecar)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    mask = labels == values[np.argmax(counts)]
    entry = describe_mask(mask, volume, sidecar, tmp_path / "out")
    written, source = nib.load(entry["path"]), nib.load(str(T1))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-6)
    voxels = np.argwhere(np.asarray(written.dataobj) > 0)
    box = [*voxels.min(axis=0), *voxels.max(axis=0)]
    assert np.abs(np.subtract(box, entry["source_box_voxel"])).max() <= 1, (box, entry)
    assert entry["voxels"] == int(mask.sum()) and len(entry["patient_mm_ras"]) == 6
    rgb = np.asarray(Image.open(entry["png"])).astype(int)
    assert rgb.shape[1] > rgb.shape[0] and ((rgb[..., 0] - rgb[..., 2]) > 60).sum() > 100  # red overlay, 4 slices


def test_mask_without_a_mapping_stays_on_the_canonical_grid(tmp_path):
    volume = np.random.default_rng(0).random((1, 8, 16, 16), dtype=np.float32)
    mask = np.zeros((1, 8, 16, 16), dtype=bool)
    mask[0, 2:5, 3:9, 4:12] = True
    entry = describe_mask(mask, volume, None, tmp_path)
    assert entry["box_voxel"] == [2, 3, 4, 4, 8, 11] and "source_box_voxel" not in entry
    assert np.array_equal(np.load(entry["path"]).astype(bool), mask)
    empty = describe_mask(np.zeros_like(mask), volume, None, tmp_path / "empty")
    assert empty["box_voxel"] is None and empty["voxels"] == 0 and Path(empty["png"]).is_file()


@needs_itk
def test_monai_transform_chain_equals_the_sidecar_path(tmp_path):
    prepare_volume(T1, tmp_path / "t1.npy", "brain", spatial_size=(32, 64, 64))
    expected = load_volume(tmp_path / "t1.npy", (1, 32, 64, 64))
    got = scan_transforms("brain", (32, 64, 64))({"image": str(T1)})["image"]
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
    with pytest.raises(ValueError, match="window must be one of"):
        scan_transforms("percentile")
