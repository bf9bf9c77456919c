import numpy as np
import pytest
import scipy.sparse

from m3d_components.data.errors import DataError
from m3d_components.data.masks import class_index_from_name, load_class_mask, load_sparse_mask, shape_from_name


def test_sparse_mask_with_shape_in_name(tmp_path):
    dense = np.zeros((2, 4, 5, 6), dtype=np.int32)
    dense[0, 1:3, 2:4, 1:5] = 1
    dense[1, 0, 0, 0] = 1
    path = tmp_path / "mask_(2, 4, 5, 6).npz"
    scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(dense.reshape(2, -1)))
    assert shape_from_name(path) == (2, 4, 5, 6)
    np.testing.assert_array_equal(load_sparse_mask(path), dense.astype(bool))
    wrong = tmp_path / "mask_(2, 4, 5, 7).npz"
    wrong.write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="does not match the shape"):
        load_sparse_mask(wrong)
    with pytest.raises(DataError, match="carries no shape"):
        shape_from_name(tmp_path / "mask.npz")


def test_class_masks_and_negatives(tmp_path):
    np.save(tmp_path / "mask_3.npy", np.zeros((1, 1, 1, 1), np.int8))
    assert class_index_from_name(tmp_path / "mask_3.npy") == 3
    neg = load_class_mask(tmp_path / "mask_3.npy", (1, 4, 4, 4))
    assert neg.shape == (1, 4, 4, 4) and not neg.any()
    with pytest.raises(DataError, match="mask_<class index>"):
        class_index_from_name("label.npy")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((1, 4, 4, 5), bool), "does not match image shape"),
        (np.zeros((1, 4, 4, 4), bool), "mask is empty"),
        (np.full((1, 4, 4, 4), 3, np.uint8), "not binary"),
        (np.ones((1, 1, 1, 1), np.int8), "negative-sample mask must be zero"),
    ],
)
def test_invalid_class_masks(tmp_path, array, message):
    np.save(tmp_path / "mask_0.npy", array)
    with pytest.raises(DataError, match=message):
        load_class_mask(tmp_path / "mask_0.npy", (1, 4, 4, 4))
