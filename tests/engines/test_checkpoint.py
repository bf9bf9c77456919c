import random

import numpy as np
import pytest
import torch

from m3d_components.engines.checkpoint import (
    RNGState, latest_checkpoint, load_safetensors, load_weights, save_safetensors,
)


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    torch.save({"rng": RNGState().state_dict()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    RNGState().load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_latest_checkpoint_is_the_newest_file(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for name in ("resume_final.pt", "resume_checkpoint_iteration=50.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert latest_checkpoint(tmp_path).endswith("iteration=50.pt")
    (tmp_path / "resume_final.pt").write_bytes(b"y")
    assert latest_checkpoint(tmp_path).endswith("resume_final.pt")


def test_safetensors_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_safetensors(model.state_dict(), tmp_path / "w" / "model.safetensors")
    assert not list(path.parent.glob("*.tmp"))
    other = torch.nn.Linear(3, 2)
    load_weights(other, path)
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_weights(torch.nn.Linear(3, 2, bias=False), path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_safetensors(tmp_path / "none.safetensors")
