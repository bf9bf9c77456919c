import math
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from m3d_components.models.clip import M3DCLIP, clip_loss
from m3d_components.models.vision import ViTConfig, VisionTransformer3D
from tests.conftest import free_port

VIT = dict(img_size=(8, 16, 16), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2)


def _model(seed=0, head_norm="none") -> M3DCLIP:
    torch.manual_seed(seed)
    text = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))
    return M3DCLIP(VisionTransformer3D(ViTConfig(**VIT)), text, embed_dim=16, head_norm=head_norm)


def _batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 16, 16, generator=g), torch.randint(5, 50, (n, 6), generator=g)


def test_loss_is_symmetric_infonce_with_exp_temperature():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(5, 8), dim=1), F.normalize(torch.randn(5, 8), dim=1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.allclose(clip_loss(img, txt, scale), expected)
    model = _model()
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)  # exp of the learnable log-scale
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)  # clamped


def test_forward_outputs_and_pooler_removed():
    model = _model()
    assert model.language_encoder.pooler is None
    image, ids = _batch()
    out = model(image, input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out["image_embeds"].shape == (4, 16) and out["text_embeds"].shape == (4, 16)
    assert torch.allclose(out["image_embeds"].norm(dim=1), torch.ones(4), atol=1e-5)
    out["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused  # DDP needs every parameter to receive a gradient
    assert set(model(image)) == {"image_embeds"}


def test_batch_head_norm_spreads_features():
    image, ids = _batch(8)
    plain = _model(head_norm="none").eval()
    spread = _model(head_norm="batch").train()
    cos_plain = plain.encode_text(ids) @ plain.encode_text(ids).T
    cos_spread = spread.encode_text(ids) @ spread.encode_text(ids).T
    assert cos_plain.mean() > 0.7 and cos_spread.mean() < 0.3
    with pytest.raises(ValueError, match="head_norm"):
        _model(head_norm="layer")


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    image, ids = _batch(4)
    local = slice(rank * 2, rank * 2 + 2)
    out = model(image[local], input_ids=ids[local])
    out["loss"].backward()
    grad = model.module.mm_vision_proj.weight.grad.numpy().copy()  # by value: tensors would travel as fds
    queue.put((rank, out["loss"].item(), grad))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_score_the_global_batch():
    """Each rank holds 2 of 4 pairs; with all-gather the loss (and the averaged gradient) equals one process on 4."""
    queue = mp.get_context("spawn").Queue()
    # a port free now (a pid-derived one once hung the rendezvous); the results are read before joining, since a
    # process does not exit before its queued items are read; join raises a rank's error
    ranks = mp.spawn(_worker, args=(2, free_port(), queue), nprocs=2, join=False)
    results = sorted(queue.get(timeout=300) for _ in range(2))
    deadline = time.monotonic() + 300
    while not ranks.join(timeout=30):  # True once every rank has exited (an error in one is raised here)
        assert time.monotonic() < deadline, "the two ranks did not exit within 5 minutes"
    single = _model()
    image, ids = _batch(4)
    out = single(image, input_ids=ids)
    out["loss"].backward()
    for _, loss, grad in results:
        assert loss == pytest.approx(out["loss"].item(), rel=1e-5)
        assert torch.allclose(torch.from_numpy(grad), single.mm_vision_proj.weight.grad, atol=1e-6)
    assert not math.isclose(out["loss"].item(), math.log(4), rel_tol=1e-3)
