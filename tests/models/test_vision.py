"""Tests for m3d_components.models.vision: shapes, released state-dict names, SDPA routing, weight I/O."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from monai.networks.nets import ViT

from m3d_components.models.vision import (
    ViTConfig,
    VisionTransformer3D,
    load_vit_weights,
    save_vit_weights,
)


def tiny_config(**overrides) -> ViTConfig:
    """(1, 8, 16, 16) input, (4, 8, 8) patches → a (2, 2, 2) grid of 8 tokens, 32 wide."""
    settings = dict(img_size=(8, 16, 16), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4)
    return ViTConfig(**{**settings, **overrides})


def tiny_model(seed: int = 0, **overrides) -> VisionTransformer3D:
    torch.manual_seed(seed)
    return VisionTransformer3D(tiny_config(**overrides)).eval()


def tiny_input(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, 8, 16, 16, generator=torch.Generator().manual_seed(seed))


def released_names_and_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict layout of M3D-CLIP's pretrained_ViT.bin, written out from the documented names."""
    h, n, patch_dim = config.hidden_size, config.num_patches, config.in_channels
    for p in config.patch_size:
        patch_dim *= p
    shapes = {
        "cls_token": (1, 1, h),
        "patch_embedding.position_embeddings": (1, n, h),
        "patch_embedding.patch_embeddings.1.weight": (h, patch_dim),
        "patch_embedding.patch_embeddings.1.bias": (h,),
        "norm.weight": (h,),
        "norm.bias": (h,),
    }
    for i in range(config.num_layers):
        shapes |= {
            f"blocks.{i}.norm1.weight": (h,),
            f"blocks.{i}.norm1.bias": (h,),
            f"blocks.{i}.attn.qkv.weight": (3 * h, h),
            f"blocks.{i}.attn.out_proj.weight": (h, h),
            f"blocks.{i}.attn.out_proj.bias": (h,),
            f"blocks.{i}.norm2.weight": (h,),
            f"blocks.{i}.norm2.bias": (h,),
            f"blocks.{i}.mlp.linear1.weight": (config.mlp_dim, h),
            f"blocks.{i}.mlp.linear1.bias": (config.mlp_dim,),
            f"blocks.{i}.mlp.linear2.weight": (h, config.mlp_dim),
            f"blocks.{i}.mlp.linear2.bias": (h,),
        }
    return shapes


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- configuration --------------------------------------------------------------------------------------------------


def test_paper_and_demo_grids():
    paper = ViTConfig.paper()
    assert paper.grid_size == (8, 16, 16) and paper.num_patches == 2048
    assert ViTConfig.demo().grid_size == (8, 8, 8)
    assert ViTConfig.paper(cls_token=False).cls_token is False


def test_config_accepts_json_lists():
    config = ViTConfig(img_size=[32, 64, 64], patch_size=[4, 8, 8], hidden_size=64, num_heads=4)
    assert config.img_size == (32, 64, 64) and config.patch_size == (4, 8, 8)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (dict(img_size=(32, 250, 256)), ["(4, 16, 16)", "(32, 250, 256)"]),
        (dict(hidden_size=100, num_heads=12), ["100", "12"]),
        (dict(dropout=1.5), ["1.5"]),
        (dict(attention="flash"), ["'flash'", "sdpa"]),
        (dict(img_size=(256, 256)), ["img_size", "(256, 256)"]),
        (dict(patch_size=(4, 0, 16)), ["patch_size", "(4, 0, 16)"]),
        (dict(num_layers=0), ["num_layers", "0"]),
        (dict(in_channels=1.5), ["in_channels", "1.5"]),
    ],
)
def test_bad_config_names_the_values(overrides, fragments):
    with pytest.raises(ValueError) as info:
        ViTConfig(**overrides)
    for fragment in fragments:
        assert fragment in str(info.value)


# --- forward --------------------------------------------------------------------------------------------------------


def test_output_shapes_with_cls():
    model, x = tiny_model(), tiny_input(batch=3)
    assert model.grid_size == (2, 2, 2)
    assert model(x).shape == (3, 1 + 8, 32)
    assert model.cls_features(x).shape == (3, 32)
    assert model.patch_features(x).shape == (3, 8, 32)
    assert torch.equal(model.patch_features(x), model(x)[:, 1:])


def test_output_shapes_without_cls():
    model, x = tiny_model(cls_token=False), tiny_input(batch=3)
    assert model.cls_token is None and "cls_token" not in model.state_dict()
    assert model(x).shape == (3, 8, 32)
    assert torch.equal(model.patch_features(x), model(x))
    with pytest.raises(ValueError, match="cls_token=True"):
        model.cls_features(x)


@pytest.mark.parametrize(
    "shape", [(2, 1, 8, 16, 17), (2, 2, 8, 16, 16), (1, 8, 16, 16), (2, 1, 16, 16, 8)]
)
def test_bad_input_shape_names_both_shapes(shape):
    with pytest.raises(ValueError) as info:
        tiny_model()(torch.rand(shape))
    message = str(info.value)
    assert "(B, 1, 8, 16, 16)" in message and str(shape) in message


def test_integer_input_is_rejected():
    with pytest.raises(ValueError, match="torch.uint8"):
        tiny_model()(torch.zeros(1, 1, 8, 16, 16, dtype=torch.uint8))


def test_patch_vectors_follow_the_released_layout():
    """Patches depth-major, then H, then W; each vector ordered (p_d, p_h, p_w, C): what the released Linear expects."""
    model = tiny_model(in_channels=2)
    x = torch.rand(2, 2, 8, 16, 16)
    b, c, (gd, gh, gw), (pd, ph, pw) = 2, 2, model.grid_size, model.config.patch_size
    expected = (
        x.view(b, c, gd, pd, gh, ph, gw, pw)
        .permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, gd, gh, gw, pd, ph, pw, C)
        .reshape(b, gd * gh * gw, pd * ph * pw * c)
    )
    assert torch.equal(model.patch_embedding.patch_embeddings[0](x), expected)


def test_cls_token_is_prepended_after_the_position_embedding():
    model, x = tiny_model(), tiny_input()
    torch.nn.init.normal_(model.cls_token)
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.setdefault("tokens", args[0]))
    model(x)
    tokens = seen["tokens"]
    assert torch.equal(tokens[:, 0], model.cls_token[0].expand(2, -1))
    assert torch.equal(tokens[:, 1:], model.patch_embedding(x))


@pytest.mark.parametrize("cls_token", [True, False])
def test_matches_monai_vit_numerically(cls_token):
    """Same maths as MONAI's ViT (the network the released weights come from), loading its 1.6 state dict too."""
    config = tiny_config(cls_token=cls_token)
    torch.manual_seed(3)
    reference = ViT(
        in_channels=1,
        img_size=config.img_size,
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        mlp_dim=config.mlp_dim,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        proj_type="perceptron",
        pos_embed_type="learnable",
        classification=cls_token,
    ).eval()
    if cls_token:
        torch.nn.init.normal_(reference.cls_token)
        reference.classification_head = torch.nn.Identity()
    model = VisionTransformer3D(config).eval()
    load_vit_weights(model, reference.state_dict())  # strict, despite MONAI 1.6's extra norm_cross_attn keys
    x = tiny_input()
    with torch.no_grad():
        expected, _ = reference(x)
        actual = model.cls_features(x) if cls_token else model(x)
    torch.testing.assert_close(actual, expected)


# --- state-dict names at the paper configuration ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_model() -> VisionTransformer3D:
    """The one full-size (87.5 M parameter) model of this file."""
    return VisionTransformer3D(ViTConfig.paper())


def test_paper_state_dict_has_exactly_the_released_names(paper_model):
    expected = released_names_and_shapes(ViTConfig.paper())
    actual = {key: tuple(value.shape) for key, value in paper_model.state_dict().items()}
    assert actual == expected
    assert 87.0e6 < sum(p.numel() for p in paper_model.parameters()) < 88.0e6


def test_released_layout_loads_strictly(paper_model):
    layout = released_names_and_shapes(ViTConfig.paper())
    released = {key: torch.full(shape, float(i)) for i, (key, shape) in enumerate(layout.items())}  # one value a key
    assert load_vit_weights(paper_model, released) == ([], [])
    for key, value in paper_model.state_dict().items():
        assert torch.equal(value, released[key]), key


# --- weight I/O -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, sibling",
    [
        ("vision_encoder.", "language_encoder.embeddings.word_embeddings.weight"),  # a whole M3D-CLIP model
        ("model.vision_tower.vision_tower.", "model.embed_tokens.weight"),  # a merged LaMed model
        ("module.", None),
        ("module.vision_encoder.", "module.logit_scale"),
    ],
)
def test_known_prefixes_are_stripped(prefix, sibling):
    source, target = tiny_model(seed=5), tiny_model(seed=6)
    wrapped = {prefix + key: value for key, value in source.state_dict().items()}
    if sibling is not None:
        wrapped[sibling] = torch.zeros(3)
    load_vit_weights(target, wrapped)
    assert_same_weights(source, target)


def test_several_encoders_in_one_checkpoint_need_an_explicit_prefix():
    tower, seg_encoder = tiny_model(seed=5), tiny_model(seed=7, cls_token=False)
    lamed = {f"model.vision_tower.vision_tower.{k}": v for k, v in tower.state_dict().items()}
    lamed |= {f"model.seg_module.image_encoder.{k}": v for k, v in seg_encoder.state_dict().items()}
    clip = {f"vision_encoder.{k}": v for k, v in tower.state_dict().items()}
    with pytest.raises(ValueError, match="prefix="):
        load_vit_weights(tiny_model(), {**lamed, **clip})
    target = tiny_model(seed=8, cls_token=False)
    load_vit_weights(target, lamed, prefix="model.seg_module.image_encoder.")
    assert_same_weights(seg_encoder, target)
    with pytest.raises(ValueError, match="'nothing.'"):
        load_vit_weights(target, lamed, prefix="nothing.")


def test_segmentation_encoder_drops_cls_token():
    source, target = tiny_model(seed=5), tiny_model(seed=6, cls_token=False)
    state = source.state_dict()
    load_vit_weights(target, state)
    assert "cls_token" in state
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_missing_unexpected_and_mismatched_keys_are_listed():
    model, state = tiny_model(seed=6), tiny_model(seed=5).state_dict()
    without_norm = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(ValueError, match=r"missing keys: 1 \(norm\.weight\)"):
        load_vit_weights(model, without_norm)
    with pytest.raises(ValueError, match=r"unexpected keys: 1 \(head\.weight\)"):
        load_vit_weights(model, {**state, "head.weight": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match=r"norm\.bias \(16,\) vs model \(32,\)"):
        load_vit_weights(model, {**state, "norm.bias": torch.zeros(16)})
    with pytest.raises(ValueError, match="not tensors"):
        load_vit_weights(model, {**state, "norm.bias": [0.0] * 32})

    with torch.no_grad():
        model.norm.weight.fill_(2.0)
    assert load_vit_weights(model, without_norm, strict=False) == (["norm.weight"], [])
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.all(model.norm.weight == 2.0)  # a missing key keeps the model's value


def test_safetensors_round_trip(tmp_path):
    source, target, x = tiny_model(seed=5), tiny_model(seed=6), tiny_input()
    path = save_vit_weights(source, tmp_path / "weights" / "vit.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["vit.safetensors"]  # no temporary file left behind
    load_vit_weights(target, path)
    assert_same_weights(source, target)
    assert torch.equal(source(x), target(x))


def test_torch_bin_is_read_with_released_names(tmp_path):
    source, target = tiny_model(seed=5), tiny_model(seed=6)
    torch.save({f"vision_encoder.{k}": v for k, v in source.state_dict().items()}, tmp_path / "pretrained_ViT.bin")
    load_vit_weights(target, tmp_path / "pretrained_ViT.bin")
    assert_same_weights(source, target)


def test_bad_paths(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="'.npz'"):
        save_vit_weights(model, tmp_path / "vit.npz")
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_vit_weights(model, tmp_path / "absent.safetensors")
    (tmp_path / "vit.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="'.ckpt'"):
        load_vit_weights(model, tmp_path / "vit.ckpt")


# --- attention backends and checkpointing -----------------------------------------------------------------------------


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[int]:
    """Count calls to the real torch SDPA (still computing its result)."""
    calls: list[int] = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("attention, expected_calls", [("sdpa", 3), ("eager", 0)])
def test_attention_goes_through_sdpa_only_in_sdpa_mode(sdpa_calls, attention, expected_calls):
    tiny_model(attention=attention, num_layers=3)(tiny_input())
    assert len(sdpa_calls) == expected_calls


def test_sdpa_and_eager_agree():
    sdpa, eager, x = tiny_model(seed=5), tiny_model(seed=6, attention="eager"), tiny_input()
    eager.load_state_dict(sdpa.state_dict())
    torch.testing.assert_close(sdpa(x), eager(x), rtol=1e-5, atol=1e-5)


def test_sdpa_attention_dropout_only_in_training():
    sdpa, eager, x = tiny_model(seed=5, dropout=0.5), tiny_model(seed=6, dropout=0.5, attention="eager"), tiny_input()
    eager.load_state_dict(sdpa.state_dict())
    torch.testing.assert_close(sdpa(x), eager(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(sdpa(x), sdpa(x))
    sdpa.train()
    assert all(block.attn.dropout_rate == 0.5 for block in sdpa.blocks)
    assert not torch.equal(sdpa(x), sdpa(x))


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    plain, checkpointed = tiny_model(seed=5).train(), tiny_model(seed=6, gradient_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls: list[int] = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    x = tiny_input()
    for model in (plain, checkpointed):
        (model(x) ** 2).mean().backward()
    assert len(calls) == 2  # one per block, only in the checkpointed model
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    checkpointed.eval()
    checkpointed(x)
    assert len(calls) == 2  # not in eval mode
