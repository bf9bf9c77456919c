import pytest
import torch

from m3d_components.metrics.retrieval import query_hits, recall_at_k, retrieval_metrics


def test_hand_checked_recall():
    # query 0: correct scored highest (rank 0); query 1: one better (rank 1); query 2: two better (rank 2)
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.7, 0.6, 0.3]])
    assert recall_at_k(sim, (1, 2, 3)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})


def test_ties_count_against_the_query():
    # a collapsed model: every image and text embedding alike, so every score ties with the correct one
    assert recall_at_k(torch.full((10, 10), 0.7), (1, 5, 10)) == {1: 0.0, 5: 0.0, 10: 1.0}
    collapsed = torch.nn.functional.normalize(torch.ones(200, 8), dim=1)
    assert all(v == 0.0 for v in retrieval_metrics(collapsed, collapsed).values())
    # query 0 ties with one other candidate (rank 1); query 1 is strictly best (rank 0); NaN scores are misses
    assert recall_at_k(torch.tensor([[0.5, 0.5], [0.1, 0.9]]), (1, 2)) == {1: 0.5, 2: 1.0}
    assert recall_at_k(torch.tensor([[float("nan"), 0.2, 0.1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), (1,)) == {
        1: pytest.approx(2 / 3)}


def test_hits_equal_argsort_ranks_without_ties():
    sim = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    assert sim.flatten().unique().numel() == sim.numel()  # no ties
    order = torch.argsort(sim, dim=1, descending=True)
    rank = (order == torch.arange(64).unsqueeze(1)).int().argmax(dim=1)  # position of the correct candidate
    hits = query_hits(sim, (1, 5, 10, 64))
    for k in (1, 5, 10, 64):
        assert torch.equal(hits[k], rank < k), k
    assert 0 < hits[10].sum() < 64


def test_directions_are_named_by_the_query():
    # Image 0 matches its text best, but text 1 prefers image 0: IR and TR must differ accordingly.
    sim = torch.tensor([[1.0, 0.9], [0.0, 0.5]])
    images = torch.eye(2)
    texts = sim.T.contiguous()  # images @ texts.T == sim
    m = retrieval_metrics(images, texts, pool_sizes=(2,), ks=(1,))
    assert m == {"itr/ir_r1@2": 1.0, "itr/tr_r1@2": 0.5}


def test_pools_nested_and_capped():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(300, 16), dim=1)
    m = retrieval_metrics(emb, emb)
    assert set(m) == {f"itr/{d}_r{k}@100" for d in ("ir", "tr") for k in (1, 5, 10)}
    assert all(v == 1.0 for v in m.values())
    small = retrieval_metrics(emb[:40], emb[:40], prefix="val/itr/")
    assert "val/itr/ir_r1@40" in small
    shuffled = retrieval_metrics(emb[:100], emb[torch.randperm(100)], ks=(1, 10))
    assert shuffled["itr/ir_r1@100"] < 0.1 and shuffled["itr/tr_r10@100"] < 0.3


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2, 4\)"):
        retrieval_metrics(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="square"):
        recall_at_k(torch.zeros(2, 3))
