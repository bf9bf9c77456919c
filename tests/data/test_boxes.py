import numpy as np
import pytest

from m3d_components.data.boxes import denormalize_box, format_box, mask_to_box, normalize_box, parse_boxes


def test_mask_to_box_min_max_per_axis():
    mask = np.zeros((1, 32, 256, 256), bool)
    mask[0, 4:23, 82:194, 72:179] = True
    assert mask_to_box(mask) == (4, 82, 72, 22, 193, 178)
    assert mask_to_box(np.zeros((4, 4, 4))) is None
    with pytest.raises(ValueError, match="shape"):
        mask_to_box(np.zeros((4, 4)))


def test_box_text_as_published():
    box = normalize_box((4, 82, 72, 23, 193, 178), (32, 256, 256))
    assert box == [0.125, 0.32, 0.281, 0.719, 0.754, 0.695]
    text = format_box(box)
    assert text == "<bx_start>[0.125, 0.32, 0.281, 0.719, 0.754, 0.695]<bx_end>"
    assert parse_boxes(f"The liver is at {text}.") == [box]
    assert format_box([0, 0, 0, 0.5, 0.5, 0.5]).startswith("<bx_start>[0.0, 0.0")


def test_parse_is_tolerant_and_finds_all():
    text = "a [ .1,0.2 , 0.3,0.4, 0.5 ,6e-1] b [1, 2, 3, 4, 5, 6] c [1, 2, 3]"
    assert parse_boxes(text) == [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 2, 3, 4, 5, 6]]
    assert parse_boxes("no box here") == []


def test_denormalize_inverts_within_rounding():
    shape = (32, 256, 256)
    voxel = (3, 10, 200, 30, 250, 255)
    assert denormalize_box(normalize_box(voxel, shape), shape) == list(voxel)
