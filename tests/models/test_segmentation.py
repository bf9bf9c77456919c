"""The promptable 3D segmentation module: SDPA attention vs MONAI's, shapes, learning, SegVol weight conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.nets import vista3d

from m3d_components.models.segmentation import (
    PromptableSegmenter,
    SDPAAttention,
    SegmenterConfig,
    SegPromptProjector,
    convert_segvol_state_dict,
    packed_samples,
    seg_token_states,
)
from m3d_components.models.vision import ViTConfig

VIT = ViTConfig(img_size=(16, 32, 32), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2,
                cls_token=False)
CONFIG = SegmenterConfig(vit=VIT, num_heads=2, mlp_dim=64)


def test_sdpa_attention_equals_monai_attention():
    torch.manual_seed(0)
    reference = vista3d.Attention(32, 4, downsample_rate=2)
    ours = SDPAAttention(32, 4, downsample_rate=2)
    ours.load_state_dict(reference.state_dict())
    q, k = torch.randn(2, 6, 32), torch.randn(2, 50, 32)
    assert torch.allclose(ours(q, k, k), reference(q, k, k), atol=1e-6)
    model = PromptableSegmenter(CONFIG)
    kinds = {type(m) for m in model.modules()}
    assert SDPAAttention in kinds and vista3d.Attention not in kinds


def test_shapes_and_clear_errors():
    model = PromptableSegmenter(CONFIG)
    logits = model(torch.randn(2, 1, 16, 32, 32), torch.randn(2, 32))
    assert logits.shape == (2, 1, 16, 32, 32)
    with pytest.raises(ValueError, match=r"prompt must be \(batch, 32\) for 2 volume"):
        model(torch.randn(2, 1, 16, 32, 32), torch.randn(1, 32))
    with pytest.raises(ValueError, match="no CLS token"):
        SegmenterConfig(vit=ViTConfig(img_size=(16, 32, 32), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64,
                                      num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"3 heads must divide half the hidden size \(16"):
        SegmenterConfig(vit=VIT, num_heads=3, mlp_dim=64)
    paper = PromptableSegmenter(SegmenterConfig.paper())
    decoder = sum(p.numel() for p in paper.mask_decoder.parameters())
    assert 110e6 < sum(p.numel() for p in paper.parameters()) < 125e6 and decoder > 20e6


def _cubes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two bright cubes at random places; masks[:, k] is cube k."""
    images = torch.rand(n, 1, 16, 32, 32, generator=generator) * 0.2
    masks = torch.zeros(n, 2, 16, 32, 32)
    for i in range(n):
        for k in range(2):
            d, h, w = (int(torch.randint(0, s - 8, (1,), generator=generator)) for s in (16, 32, 32))
            w = w // 2 + (16 if k else 0)  # cube 0 on the left half, cube 1 on the right
            masks[i, k, d:d + 6, h:h + 8, min(w, 24):min(w, 24) + 8] = 1
            images[i, 0][masks[i, k] > 0] = 0.6 + 0.3 * k
    return images, masks


def test_the_prompt_selects_what_is_segmented_and_training_learns_it():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = PromptableSegmenter(CONFIG)
    prompts = torch.nn.Embedding(2, 32)  # stands in for the projected [SEG] states of two class names
    optimizer = torch.optim.AdamW([*model.parameters(), *prompts.parameters()], lr=2e-3)
    loss_fn = DiceCELoss(sigmoid=True)
    for _ in range(200):
        images, masks = _cubes(8, generator)
        which = torch.randint(0, 2, (8,), generator=generator)
        logits = model(images, prompts(which))
        loss = loss_fn(logits, masks[torch.arange(8), which][:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, masks = _cubes(16, generator)
    which = torch.arange(16) % 2
    target = masks[torch.arange(16), which][:, None]
    with torch.no_grad():
        right = compute_dice(model(images, prompts(which)).sigmoid() > 0.5, target).mean().item()
        swapped = compute_dice(model(images, prompts(1 - which)).sigmoid() > 0.5, target).mean().item()
    assert right > 0.8, right
    assert swapped < 0.2, swapped  # the other prompt gives the other cube: the prompt, not the image alone, decides


def _segvol_checkpoint(model: PromptableSegmenter) -> dict[str, torch.Tensor]:
    """A state dict laid out as SegVol's ``pytorch_model.bin``: documented names, extra unused parts."""
    ours = model.state_dict()
    segvol = {}
    for name, value in ours.items():
        name = name.replace(".mlp.linear1.", ".mlp.lin1.").replace(".mlp.linear2.", ".mlp.lin2.")
        if name.endswith("positional_encoding_gaussian_matrix"):
            value = value[[1, 0, 2]]
        segvol[f"model.{name}"] = value.clone()
    dim = model.prompt_dim
    for i in (1, 2, 3):
        for j, (out, inp) in enumerate(((dim, dim), (dim, dim), (dim // 8, dim))):
            segvol[f"model.mask_decoder.output_hypernetworks_mlps.{i}.layers.{j}.weight"] = torch.randn(out, inp)
    segvol["model.mask_decoder.iou_prediction_head.layers.0.weight"] = torch.randn(256, dim)
    segvol["model.prompt_encoder.point_embeddings.0.weight"] = torch.randn(1, dim)
    segvol["model.prompt_encoder.not_a_point_embed.weight"] = torch.randn(1, dim)
    segvol["model.text_encoder.clip_text_model.embeddings.token_embedding.weight"] = torch.randn(10, dim)
    segvol["model.image_encoder.blocks.0.norm_cross_attn.weight"] = torch.ones(dim)
    return segvol


def test_segvol_checkpoint_converts_and_loads_strictly():
    torch.manual_seed(0)
    source = PromptableSegmenter(CONFIG)
    checkpoint = _segvol_checkpoint(source)
    target = PromptableSegmenter(CONFIG)
    target.load_state_dict(convert_segvol_state_dict(checkpoint), strict=True)
    image, prompt = torch.randn(1, 1, 16, 32, 32), torch.randn(1, 32)
    assert torch.equal(target.eval()(image, prompt), source.eval()(image, prompt))
    # SegVol's Fourier PE stacks coordinates as (axis 1, axis 0, axis 2): computed its way, it equals ours
    matrix = checkpoint["model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    axes = [(torch.arange(n) + 0.5) / n for n in VIT.grid_size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)[..., [1, 0, 2]]
    projected = 2 * np.pi * ((2 * grid - 1) @ matrix)
    segvol_pe = torch.cat([projected.sin(), projected.cos()], dim=-1).permute(3, 0, 1, 2)
    assert torch.allclose(target.prompt_encoder.pe_layer(VIT.grid_size), segvol_pe, atol=1e-5)
    with pytest.raises(ValueError, match="not a SegVol checkpoint"):
        convert_segvol_state_dict(source.state_dict())


def test_seg_states_are_those_of_the_token_before_seg_averaged_per_sample():
    hidden = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    seg = 9
    ids = torch.tensor([[1, 2, seg, 3, 2, seg],   # two [SEG]: mean of positions 1 and 4
                        [seg, 4, 5, 6, 7, 8]])    # only at position 0: no preceding state
    states, found = seg_token_states(hidden, ids, seg)
    assert found.tolist() == [True, False]
    assert torch.equal(states[0], (hidden[0, 1] + hidden[0, 4]) / 2) and torch.equal(states[1], torch.zeros(3))
    padded = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    states, _ = seg_token_states(hidden, ids, seg, mask=padded)  # a [SEG] under padding does not count
    assert torch.equal(states[0], hidden[0, 1])
    with pytest.raises(ValueError, match="disagree"):
        seg_token_states(hidden, ids[:, :5], seg)
    projector = SegPromptProjector(3, 32)
    assert projector(states).shape == (2, 32)


def test_packed_rows_give_each_sample_its_own_seg_state():
    im, seg, bos, pad = 7, 9, 1, 0
    ids = torch.tensor([[bos, im, im, 3, seg, bos, im, im, 4, 5, seg, 6],   # samples 0 and 1
                        [bos, im, im, 2, 2, 2, seg, 3, seg, pad, pad, pad]])  # sample 2 (two [SEG]), then padding
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]])
    samples = packed_samples(ids, positions, im)
    assert samples.tolist() == [[0] * 5 + [1] * 7, [2] * 12]
    hidden = torch.randn(2, 12, 4)
    states, found = seg_token_states(hidden, ids, seg, samples=samples, num_samples=3)
    assert found.tolist() == [True, True, True]
    torch.testing.assert_close(states, torch.stack([hidden[0, 3], hidden[0, 9], (hidden[1, 5] + hidden[1, 7]) / 2]))
    with pytest.raises(ValueError, match="num_samples"):
        seg_token_states(hidden, ids, seg, samples=samples)
