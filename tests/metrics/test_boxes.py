"""3D IoU on hand-checked boxes, and the published enclosing-box variant kept for parity."""

import pytest

from m3d_components.metrics.boxes import box_iou, enclosing_overlap


def test_iou_hand_checked():
    a = [0, 0, 0, 2, 2, 2]  # volume 8
    b = [1, 1, 1, 3, 3, 3]  # volume 8, overlap 1
    assert box_iou(a, b) == pytest.approx(1 / 15)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, [2, 2, 2, 4, 4, 4]) == 0.0  # touching faces
    assert box_iou([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 2]) == pytest.approx(0.5)


def test_enclosing_overlap_is_smaller_than_iou_and_named_apart():
    a, b = [0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3]
    assert enclosing_overlap(a, b) == pytest.approx(1 / 27, rel=1e-5)  # the hull is 3 × 3 × 3
    assert enclosing_overlap(a, b) < box_iou(a, b)


def test_bad_box_is_refused():
    with pytest.raises(ValueError, match="6 numbers"):
        box_iou([0, 0, 1, 1], [0, 0, 0, 1, 1, 1])
