import pytest

from m3d_components.engines.pipeline import chance_recall, demo_table, run_demo


def test_chance_and_table():
    assert chance_recall(1, 100) == 0.01 and chance_recall(10, 5) == 1.0
    table = demo_table({"clip": {"itr/ir_r10@100": 0.9, "itr/mean_r1": 0.3}}).splitlines()
    assert table[2] == "| clip | itr/ir_r10@100 | 0.900 | 0.100 |"
    assert table[3] == "| clip | itr/mean_r1 | 0.300 |  |"


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown demo stage\(s\) \['train-all'\]"):
        run_demo(tmp_path, stages=("clip", "train-all"))


def test_lamed_rows_show_the_image_free_control():
    table = demo_table({"lamed": {"cvqa/acc": 0.46, "control/cvqa/acc": 0.26, "rec/baseline_acc@0.2": 0.05}})
    assert "| lamed | cvqa/acc | 0.460 | 0.260 |" in table.splitlines()
    assert not any("control/" in line for line in table.splitlines())


def test_seg_rows_keep_per_dataset_scores_and_leave_per_class_ones_to_the_files():
    table = demo_table({"seg": {"ss/dice": 0.4, "control/ss/dice": 0.02, "ss/dice/demo": 0.4,
                                "ss/dice/demo/liver": 0.8}}).splitlines()
    assert "| seg | ss/dice | 0.400 | 0.020 |" in table and "| seg | ss/dice/demo | 0.400 |  |" in table
    assert not any("liver" in line for line in table)
