import numpy as np
import pytest

from m3d_components.data.errors import DataError
from m3d_components.data.volume import check_volume, load_volume, minmax_normalize, save_volume

from .conftest import SHAPE, write_volume


@pytest.mark.parametrize("dtype, tol", [("float32", 0), ("float16", 1e-3), ("uint8", 0.5 / 255 + 1e-6)])
def test_cache_dtypes_round_trip(tmp_path, dtype, tol):
    x = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    x.flat[0], x.flat[1] = 0, 1
    save_volume(tmp_path / "v.npy", x, dtype=dtype)
    assert np.load(tmp_path / "v.npy").dtype == np.dtype(dtype)
    y = load_volume(tmp_path / "v.npy", SHAPE)
    assert y.dtype == np.float32 and np.abs(y - x).max() <= tol


def test_minmax_normalize_scales_and_rejects_degenerate():
    y = minmax_normalize(np.array([[-100.0, 0.0, 300.0]]))
    np.testing.assert_allclose(y, [[0, 0.25, 1]])
    with pytest.raises(DataError, match="constant"):
        minmax_normalize(np.full((2, 2), 7.0), "scan.nii")
    with pytest.raises(DataError, match="NaN"):
        minmax_normalize(np.array([0.0, np.nan, 1.0]), "scan.nii")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"garbage, not numpy"), "cannot read"),
        (lambda p: np.save(p, np.zeros((8, 16, 16), np.float32)), r"\(1, D, H, W\)"),
        (lambda p: np.save(p, np.full(SHAPE, np.nan, np.float32)), "NaN"),
        (lambda p: np.save(p, np.full(SHAPE, 0.5, np.float32)), "constant"),
        (lambda p: np.save(p, np.linspace(-1000, 1000, np.prod(SHAPE)).reshape(SHAPE).astype(np.float32)), r"\[0, 1\]"),
        (lambda p: np.save(p, np.zeros(SHAPE, np.int64)), "dtype"),
    ],
)
def test_bad_volumes_name_the_file(tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        load_volume(path)
    assert "bad.npy" in str(info.value)


def test_wrong_shape_against_expected(tmp_path):
    write_volume(tmp_path / "v.npy")
    with pytest.raises(DataError, match=r"wrong shape \(1, 8, 16, 16\), expected \(1, 32, 256, 256\)"):
        load_volume(tmp_path / "v.npy", (1, 32, 256, 256))


def test_check_volume_accepts_canonical():
    x = np.linspace(0, 1, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    assert check_volume(x, "mem").dtype == np.float32
