"""Task mixtures: shares, per-epoch determinism, DDP-friendly tables, and the evaluation suite."""

import pytest
import torch

from m3d_components.data.mixture import TaskMixture, evaluation_suite


class Items(torch.utils.data.Dataset):
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.name, i


def _counts(mixture):
    names = [mixture[i][0] for i in range(len(mixture))]
    return {n: names.count(n) for n in set(names)}


def test_default_shares_follow_sizes_and_weights_override():
    datasets = {"big": Items("big", 900), "small": Items("small", 100)}
    assert TaskMixture(datasets).shares == pytest.approx({"big": 0.9, "small": 0.1})
    mixed = TaskMixture(datasets, {"big": 1, "small": 1}, num_samples=4000)
    counts = _counts(mixed)
    assert abs(counts["small"] - 2000) < 150  # multinomial draw around the 50 % share


def test_items_are_drawn_evenly_when_a_share_exceeds_the_dataset():
    mixture = TaskMixture({"a": Items("a", 10)}, num_samples=25)
    items = sorted(mixture[i][1] for i in range(25))
    assert set(items) == set(range(10))
    assert all(2 <= items.count(i) <= 3 for i in range(10))  # two full passes, then half of a third


def test_same_epoch_same_table_other_epoch_other_table():
    datasets = {"a": Items("a", 50), "b": Items("b", 50)}
    one, two = TaskMixture(datasets, seed=3), TaskMixture(datasets, seed=3)
    assert [one[i] for i in range(100)] == [two[i] for i in range(100)]
    first = [one[i] for i in range(100)]
    one.set_epoch(1)
    assert [one[i] for i in range(100)] != first


def test_zero_weight_drops_a_dataset_and_bad_weights_are_named():
    datasets = {"a": Items("a", 5), "b": Items("b", 5)}
    assert set(_counts(TaskMixture(datasets, {"a": 1, "b": 0}))) == {"a"}
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        TaskMixture(datasets, {"a": 1})
    with pytest.raises(ValueError, match=">= 0"):
        TaskMixture(datasets, {"a": 1, "b": -1})
    with pytest.raises(ValueError, match="no non-empty dataset"):
        TaskMixture({"a": Items("a", 0)})


def test_evaluation_suite_keeps_tasks_contiguous_and_seeded():
    suite = evaluation_suite({"a": Items("a", 100), "b": Items("b", 3)}, max_per_task=10, seed=0)
    names = [suite[i][0] for i in range(len(suite))]
    assert names == ["a"] * 10 + ["b"] * 3
    again = evaluation_suite({"a": Items("a", 100), "b": Items("b", 3)}, max_per_task=10, seed=0)
    assert [suite[i] for i in range(13)] == [again[i] for i in range(13)]


def test_evaluation_suite_limits_per_task():
    suite = evaluation_suite({"a": Items("a", 100), "b": Items("b", 30)}, max_per_task={"a": None, "b": 5})
    names = [suite[i][0] for i in range(len(suite))]
    assert names.count("a") == 100 and names.count("b") == 5
