import pytest

from m3d_components.engines.pipeline import chance_recall, demo_table, run_demo


def test_chance_and_table():
    assert chance_recall(1, 100) == 0.01 and chance_recall(10, 5) == 1.0
    table = demo_table({"clip": {"itr/ir_r10@100": 0.9, "itr/mean_r1": 0.3}}).splitlines()
    assert table[2] == "| clip | itr/ir_r10@100 | 0.900 | 0.100 |"
    assert table[3] == "| clip | itr/mean_r1 | 0.300 |  |"


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown demo stage\(s\) \['seg'\]"):
        run_demo(tmp_path, stages=("clip", "seg"))


def test_lamed_rows_show_the_image_free_control():
    table = demo_table({"lamed": {"cvqa/acc": 0.46, "control/cvqa/acc": 0.26, "rec/baseline_acc@0.2": 0.05}})
    assert "| lamed | cvqa/acc | 0.460 | 0.260 |" in table.splitlines()
    assert not any("control/" in line for line in table.splitlines())
