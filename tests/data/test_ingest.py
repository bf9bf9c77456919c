"""Own-scan ingestion on real files: the ITK T1 MRI + its k-means label map, and a DICOM series built from pydicom's
CT_small.dcm. The forward mapping (MONAI) and the inverse (sidecar matrix) must agree voxel for voxel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from scipy import ndimage

from m3d_components.data.boxes import mask_to_box
from m3d_components.data.errors import DataError
from m3d_components.data.ingest import (
    box_to_patient_mm,
    box_to_source,
    load_sidecar,
    load_source,
    mask_to_source,
    prepare_mask,
    prepare_volume,
    sidecar_path,
    write_mask_nifti,
)
from m3d_components.data.volume import load_volume

ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
T1 = ITK / "KmeansTest_T1UCharRaw.nii.gz"
LABELS = ITK / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"
NATIVE_IPL = (128, 62, 128)  # the T1 grid (128, 128, 62) reoriented to IPL

needs_itk = pytest.mark.skipif(not T1.is_file(), reason="Debian package insighttoolkit5-examples not installed")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def source_labels() -> np.ndarray:
    return np.asarray(nib.load(str(LABELS)).dataobj)


@needs_itk
def test_prepared_volume_shape_range_and_sidecar(tmp_path):
    out = tmp_path / "t1.npy"
    sidecar = prepare_volume(T1, out, window="percentile", spatial_size=(16, 64, 64), cache_dtype="float16")
    volume = load_volume(out, expected_shape=(1, 16, 64, 64))
    assert volume.min() == pytest.approx(0.0, abs=1e-3) and volume.max() == pytest.approx(1.0, abs=1e-3)
    assert load_sidecar(sidecar_path(out)) == json.loads(json.dumps(sidecar))
    assert sidecar["source_shape"] == [128, 128, 62]
    np.testing.assert_allclose(sidecar["source_affine"], nib.load(str(T1)).affine, atol=1e-6)
    canonical_affine = np.asarray(sidecar["source_affine"]) @ np.asarray(sidecar["canonical_to_source"])
    assert nib.aff2axcodes(canonical_affine) == ("I", "P", "L")


@needs_itk
def test_matrix_reproduces_the_resampled_volume(tmp_path):
    """Sampling the windowed source through canonical_to_source gives MONAI's trilinear output."""
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", window="percentile", spatial_size=(16, 64, 64))
    lo, hi = sidecar["window"]["range"]
    windowed = np.clip((nib.load(str(T1)).get_fdata() - lo) / (hi - lo), 0, 1)
    expected = ndimage.affine_transform(
        windowed, np.asarray(sidecar["canonical_to_source"]), output_shape=(16, 64, 64), order=1, mode="nearest"
    )
    np.testing.assert_allclose(load_volume(tmp_path / "t1.npy")[0], expected, atol=1e-4)


@needs_itk
def test_native_size_round_trip_is_exact(tmp_path, source_labels):
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=NATIVE_IPL, crop_foreground=False)
    canonical = prepare_mask(LABELS, sidecar)
    assert canonical.shape == (1, *NATIVE_IPL)
    for value in range(1, 7):
        np.testing.assert_array_equal(mask_to_source(canonical == value, sidecar), source_labels == value)
        assert box_to_source(mask_to_box(canonical == value), sidecar) == list(mask_to_box(source_labels == value))


@needs_itk
def test_box_maps_back_within_one_voxel(tmp_path, source_labels):
    # (32, 64, 64) keeps at most ~2.7 source voxels per canonical voxel, so box edges may move by one voxel.
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=(32, 64, 64))
    canonical = prepare_mask(LABELS, sidecar)
    region = box_to_source([0, 0, 0, 31, 63, 63], sidecar)  # the foreground crop, in source voxels
    inside = [
        v
        for v in range(1, 7)
        if np.all(np.asarray(mask_to_box(source_labels == v)[:3]) >= region[:3])
        and np.all(np.asarray(mask_to_box(source_labels == v)[3:]) <= region[3:])
    ]
    assert len(inside) >= 3
    for value in inside:
        mapped = box_to_source(mask_to_box(canonical == value), sidecar)
        assert np.abs(np.subtract(mapped, mask_to_box(source_labels == value))).max() <= 1, value


@needs_itk
def test_mask_written_back_as_nifti(tmp_path, source_labels):
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=(32, 64, 64), crop_foreground=False)
    values, counts = np.unique(source_labels, return_counts=True)
    big = int(values[np.argmax(counts)])
    out = write_mask_nifti(prepare_mask(LABELS, sidecar) == big, sidecar, tmp_path / "mask.nii.gz")
    written, source = nib.load(str(out)), nib.load(str(T1))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert _dice(np.asarray(written.dataobj) > 0, source_labels == big) > 0.9


@needs_itk
def test_patient_mm_box_matches_the_source_affine(tmp_path, source_labels):
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=NATIVE_IPL, crop_foreground=False)
    box = mask_to_box(prepare_mask(LABELS, sidecar) == 6)
    source_box = np.asarray(mask_to_box(source_labels == 6), dtype=float)
    corners = np.stack([source_box[:3] - 0.5, source_box[3:] + 0.5])
    world = nib.affines.apply_affine(nib.load(str(T1)).affine, corners)
    ras = box_to_patient_mm(box, sidecar)
    np.testing.assert_allclose(ras, np.concatenate([world.min(0), world.max(0)]), atol=1e-6)
    lps = box_to_patient_mm(box, sidecar, convention="LPS")
    np.testing.assert_allclose(lps[2::3], ras[2::3])
    np.testing.assert_allclose(lps[:2], [-ras[3], -ras[4]])


CT_SMALL = get_testdata_file("CT_small.dcm")


def _write_ct_series(
    folder: Path,
    offsets: Sequence[float] = (0, 5, 10, 15, 20),
    numbers: Sequence[int] | None = None,
    series_uid: str | None = None,
    description: str | None = None,
    prefix: str = "slice",
) -> None:
    """Copies of CT_small.dcm at z + ``offsets`` mm; slice k gets +100·k HU so the slice order is visible.

    ``numbers`` are the InstanceNumbers (default 1, 2, …); file names run in reverse slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for k, offset in enumerate(offsets):
        ds = pydicom.dcmread(CT_SMALL)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + offset]
        ds.InstanceNumber = numbers[k] if numbers else k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if series_uid:
            ds.SeriesInstanceUID = series_uid
        if description:
            ds.SeriesDescription = description
        ds.PixelData = (ds.pixel_array + 100 * k).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"{prefix}_{len(offsets) - 1 - k:03d}.dcm")


def _expected_slice(k: int) -> np.ndarray:
    """Slice k of the series as MONAI returns it: (column, row), rescaled to HU."""
    ds = pydicom.dcmread(CT_SMALL)
    return (ds.pixel_array.T + 100 * k) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_dicom_series(tmp_path):
    series = tmp_path / "series"
    _write_ct_series(series)
    sidecar = prepare_volume(series, tmp_path / "ct.npy", window="abdomen", spatial_size=(8, 32, 32))
    assert load_volume(tmp_path / "ct.npy").shape == (1, 8, 32, 32)
    assert sidecar["source_shape"] == [128, 128, 5]
    top = box_to_source([0, 0, 0, 0, 31, 31], sidecar)  # first canonical slab = most superior
    assert top[2] == top[5] == 4
    top_mm = box_to_patient_mm([0, 0, 0, 0, 31, 31], sidecar)
    bottom_mm = box_to_patient_mm([7, 0, 0, 7, 31, 31], sidecar)
    assert top_mm[2] > bottom_mm[5]
    mask = np.zeros((1, 8, 32, 32), dtype=bool)
    mask[0, 2:6, 8:24, 8:24] = True
    out = write_mask_nifti(mask, sidecar, tmp_path / "mask.nii.gz")
    written = nib.load(str(out))
    assert written.shape == (128, 128, 5)
    np.testing.assert_allclose(written.affine, sidecar["source_affine"], atol=1e-4)
    back = box_to_source(mask_to_box(mask), sidecar)
    assert back == list(mask_to_box(np.asarray(written.dataobj)))


def test_dicom_slices_follow_position_not_instance_number(tmp_path):
    """InstanceNumbers out of position order (and files that are not images) must not change the volume."""
    series = tmp_path / "series"
    _write_ct_series(series, numbers=[3, 1, 5, 2, 4])
    (series / "notes.txt").write_text("exported by PACS")
    report = pydicom.dcmread(CT_SMALL)  # a DICOM file without pixels, in another series, like a DICOMDIR or report
    del report.PixelData, report.Rows, report.Columns
    report.SeriesInstanceUID = generate_uid()
    report.save_as(series / "report.dcm")
    source = load_source(series)
    assert tuple(source.shape) == (1, 128, 128, 5)
    for k in range(5):
        np.testing.assert_array_equal(source[0, :, :, k].numpy(), _expected_slice(k), err_msg=f"slice {k}")
    first_z = float(pydicom.dcmread(CT_SMALL).ImagePositionPatient[2])
    np.testing.assert_allclose(source.affine[2, 2:].numpy(), [5.0, first_z], atol=1e-4)


def test_two_dicom_series_in_one_folder_are_refused(tmp_path):
    folder = tmp_path / "export"
    axial, scout = generate_uid(), generate_uid()
    _write_ct_series(folder, series_uid=axial, description="AX 5mm", prefix="ax")
    _write_ct_series(folder, offsets=(2.5, 7.5, 12.5), series_uid=scout, description="scout", prefix="scout")
    with pytest.raises(DataError, match="2 DICOM series") as info:
        prepare_volume(folder, tmp_path / "out.npy", spatial_size=(8, 8, 8))
    assert info.value.source == str(folder)
    message = str(info.value)
    assert f"{axial} 'AX 5mm' (5 slices)" in message and f"{scout} 'scout' (3 slices)" in message
    assert not (tmp_path / "out.npy").exists()


def test_dicom_only_in_subfolders_names_them(tmp_path):
    export = tmp_path / "export"
    _write_ct_series(export / "DICOM" / "SE1")
    _write_ct_series(export / "DICOM" / "SE2", offsets=(0, 5, 10), series_uid=generate_uid())
    (export / "README.txt").write_text("exported by PACS")
    with pytest.raises(DataError, match="no DICOM image files") as info:
        load_source(export)
    assert info.value.source == str(export)
    message = str(info.value)
    assert str(Path("DICOM", "SE1")) + " (5 files)" in message and str(Path("DICOM", "SE2")) + " (3 files)" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM image files in the folder$"):
        load_source(tmp_path / "empty")


@pytest.mark.parametrize(
    "offsets, problem",
    [
        ((0, 5, 10, 20, 25), "uneven slice spacing: 10 mm between"),  # slice at 15 mm missing
        ((0, 5, 5, 10, 15), "same position"),
    ],
)
def test_dicom_gaps_and_duplicates_are_refused(tmp_path, offsets, problem):
    series = tmp_path / "series"
    _write_ct_series(series, offsets=offsets)
    with pytest.raises(DataError, match=problem) as info:
        load_source(series)
    assert info.value.source == str(series)


def _save_nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d / "missing.nii.gz", "not found"),
        (lambda d: _write_bytes(d / "corrupt.nii.gz", b"not a nifti file"), "cannot read"),
        (lambda d: _save_nifti(d / "flat.nii.gz", np.random.rand(16, 16).astype(np.float32)), "3D"),
        (lambda d: _save_nifti(d / "constant.nii.gz", np.full((8, 8, 8), 7, np.float32)), "constant"),
        (lambda d: _save_nifti(d / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32)), "NaN"),
        (lambda d: _write_bytes(d / "scan.mha", b""), "unsupported"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(DataError, match=problem) as info:
        prepare_volume(path, tmp_path / "out.npy", spatial_size=(8, 8, 8))
    assert info.value.source == str(path)
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize(
    "values, problem",
    [(np.full((8, 8, 8), np.nan, np.float32), "NaN"), (np.full((8, 8, 8), 7, np.float32), "constant"),
     (np.linspace(-1000, -400, 512, dtype=np.float32).reshape(8, 8, 8), "no voxel lies above the floor")],
)
def test_the_monai_chain_names_the_file_of_a_bad_scan(tmp_path, values, problem):
    """scan_transforms (MONAI Label's preprocessing) refuses what load_source refuses, before the crop and resize."""
    from m3d_components.data.ingest import scan_transforms

    path = _save_nifti(tmp_path / "scan.nii.gz", values)
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps a transform's error
        scan_transforms("abdomen", (8, 8, 8))({"image": str(path)})
    cause = info.value.__cause__
    assert isinstance(cause, DataError) and problem in str(cause) and cause.source == str(path)


@needs_itk
def test_a_ct_window_on_a_scan_without_air_is_warned_about(tmp_path, caplog):
    """The T1 is MRI (0–255): the abdomen window assumes Hounsfield units; the percentile window does not."""
    with caplog.at_level("WARNING", logger="m3d_components.data.ingest"):
        prepare_volume(T1, tmp_path / "ct.npy", "abdomen", spatial_size=(8, 16, 16))
    assert "not CT in Hounsfield units" in caplog.text and "--window percentile" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="m3d_components.data.ingest"):
        prepare_volume(T1, tmp_path / "mri.npy", "percentile", spatial_size=(8, 16, 16))
    assert "Hounsfield" not in caplog.text


def test_an_enhanced_multiframe_dicom_is_refused(tmp_path):
    """Per-frame geometry that MONAI's reader ignores (it would build an identity affine) is named, not guessed."""
    header = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    header.NumberOfFrames = 4
    del header.ImagePositionPatient
    path = tmp_path / "enhanced.dcm"
    header.save_as(str(path))
    with pytest.raises(DataError, match="enhanced multi-frame DICOM") as info:
        prepare_volume(path, tmp_path / "out.npy", spatial_size=(8, 8, 8))
    assert info.value.source == str(path)


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="window"):
        prepare_volume(T1, tmp_path / "out.npy", window="liver")
    with pytest.raises(ValueError, match="spatial_size"):
        prepare_volume(T1, tmp_path / "out.npy", spatial_size=(32, 256))


@needs_itk
def test_label_map_on_another_grid_is_rejected(tmp_path):
    sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=(8, 16, 16))
    other = _save_nifti(tmp_path / "other.nii.gz", np.zeros((128, 128, 62), np.uint8))
    with pytest.raises(DataError, match="affine") as info:
        prepare_mask(other, sidecar)
    assert info.value.source == str(other)
    with pytest.raises(ValueError, match="canonical size"):
        mask_to_source(np.zeros((8, 16, 17), bool), sidecar)


def test_bad_sidecar(tmp_path):
    path = tmp_path / "scan.json"
    path.write_text(json.dumps({"format": "m3d-ingest/1", "source": "x.nii.gz"}))
    with pytest.raises(DataError, match="lacks key") as info:
        load_sidecar(path)
    assert info.value.source == str(path)


@needs_itk
def test_works_with_meta_tracking_switched_off(tmp_path):
    from monai.data import get_track_meta, set_track_meta

    set_track_meta(False)
    try:
        sidecar = prepare_volume(T1, tmp_path / "t1.npy", "percentile", spatial_size=(8, 16, 16))
        assert prepare_mask(LABELS, sidecar).shape == (1, 8, 16, 16)
        assert not get_track_meta()
    finally:
        set_track_meta(True)
