"""The spatial-pooling perceiver: token counts from the shapes, pooling on the 3D grid, clear shape errors."""

import pytest
import torch
import torch.nn.functional as F

from m3d_components.models.perceiver import SpatialPoolingPerceiver


def test_paper_configuration_gives_256_tokens_and_released_names():
    perceiver = SpatialPoolingPerceiver(768, 64, (8, 16, 16))
    assert perceiver.num_tokens == 256
    assert sorted(perceiver.state_dict()) == [
        "projector.0.bias", "projector.0.weight", "projector.2.bias", "projector.2.weight"
    ]
    assert perceiver(torch.rand(1, 2048, 768)).shape == (1, 256, 64)


def test_spatial_pooling_averages_grid_neighbours():
    grid = (2, 4, 4)
    perceiver = SpatialPoolingPerceiver(3, 3, grid, layer_type="linear", num_layers=1)
    with torch.no_grad():
        perceiver.projector[0].weight.copy_(torch.eye(3))
        perceiver.projector[0].bias.zero_()
    tokens = torch.rand(2, 32, 3)  # depth-major order, as the ViT emits its patches
    out = perceiver(tokens)
    volume = tokens.transpose(1, 2).reshape(2, 3, *grid)
    # token (0, 1, 1) of the pooled (1, 2, 2) grid averages the 2×2×2 block starting at (0, 2, 2)
    expected = volume[:, :, 0:2, 2:4, 2:4].mean(dim=(2, 3, 4))
    torch.testing.assert_close(out[:, 3], expected)


def test_sequence_pooling_reduces_by_the_same_factor():
    perceiver = SpatialPoolingPerceiver(4, 4, (2, 4, 4), pooling="sequence", layer_type="linear", num_layers=1)
    tokens = torch.rand(1, 32, 4)
    assert perceiver.num_tokens == 4
    pooled = F.avg_pool1d(tokens.transpose(1, 2), 8).transpose(1, 2)
    torch.testing.assert_close(perceiver(tokens), perceiver.projector(pooled))


def test_mlp_has_activation_and_linear_has_none():
    assert isinstance(SpatialPoolingPerceiver(4, 4, (2, 2, 2)).projector[1], torch.nn.GELU)
    linear = SpatialPoolingPerceiver(4, 4, (2, 2, 2), layer_type="linear", num_layers=2).projector
    assert all(isinstance(m, torch.nn.Linear) for m in linear)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="divisible by pooling_size 2"):
        SpatialPoolingPerceiver(4, 4, (3, 4, 4))
    with pytest.raises(ValueError, match="pooling must be one of"):
        SpatialPoolingPerceiver(4, 4, (2, 2, 2), pooling="max")
    with pytest.raises(ValueError, match="expected 8 patch tokens"):
        SpatialPoolingPerceiver(4, 4, (2, 2, 2))(torch.rand(1, 9, 4))
