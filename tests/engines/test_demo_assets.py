import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from m3d_components.engines.demo import ensure_demo_data


def _manifest(path, **change):
    manifest = {"size": [32, 64, 64], "seed": 0, "splits": {"train": 800, "validation": 40, "test": 100}, **change}
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_existing_corpus_with_the_same_settings_is_reused(tmp_path):
    _manifest(tmp_path / "demo")
    assert ensure_demo_data(tmp_path / "demo") == str((tmp_path / "demo").resolve())
    _manifest(tmp_path / "small", splits={"train": 6, "validation": 2, "test": 3})
    assert ensure_demo_data(tmp_path / "small", n_train=6, n_val=2, n_test=3)


@pytest.mark.parametrize("change", [{"seed": 1}, {"size": [32, 256, 256]}, {"splits": {"train": 6, "validation": 2, "test": 3}}])
def test_a_corpus_made_with_other_settings_is_refused(tmp_path, change):
    _manifest(tmp_path / "demo", **change)
    with pytest.raises(ValueError, match="choose another folder or delete it"):
        ensure_demo_data(tmp_path / "demo")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from m3d_components.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("corpus")
    make_demo_data(out, n_train=6, n_val=2, n_test=3)
    return out


def test_pretraining_documents_answer_from_the_case_summary_of_training_cases_only(small_corpus):
    """Each document is "<summary of a training case> <question> <answer>", and the answer follows from the summary:
    the closed-VQA option is written in it, and a class it does not list is refused — so the tiny LLM learns
    to answer from its context, which LaMed then replaces with image tokens."""
    from m3d_components.data.prompts import SEG_TOKEN
    from m3d_components.engines.demo import CHOICE_ORDERS, case_summary, demo_pretraining_texts

    attributes = json.loads((small_corpus / "demo_attributes.json").read_text())
    summaries = {split: {case_summary(a) for a in attributes.values() if a["split"] == split}
                 for split in ("train", "validation", "test")}
    texts = demo_pretraining_texts(small_corpus)
    contexts = [next((s for s in summaries["train"] if t.startswith(s + " ")), None) for t in texts]
    assert all(contexts), [t for t, c in zip(texts, contexts) if c is None][:3]
    assert len(set(contexts)) == 6
    assert not any(t.startswith(s) for t in texts for s in summaries["validation"] | summaries["test"])
    closed = [(c, t) for c, t in zip(contexts, texts) if " Choices: A. " in t]
    assert closed and all(t.rsplit(". ", 1)[-1] in c for c, t in closed)
    orders = Counter()
    for _, text in closed:  # the answer letter names the option that holds the answer, whatever the order
        rest, answer = text.rsplit(". ", 1)
        question, options = rest[:-2].split(" Choices: ", 1)
        assert f"{rest[-1]}. {answer} " in options + " ", text
        orders[question, frozenset(re.findall(r"[A-D]\. (.*?)(?= [A-D]\. |$)", options))] += 1
    assert set(orders.values()) == {CHOICE_ORDERS}  # every question comes in CHOICE_ORDERS option orders
    refusals = [(c, t) for c, t in zip(contexts, texts) if "Sorry" in t or " not " in t]
    assert refusals and all("[" not in t[len(c):] for c, t in refusals)  # no box and no [SEG] for absent classes
    assert any(SEG_TOKEN in t for t in texts) and any("[0." in t for t in texts)


def test_demo_llm_is_reused_only_when_made_with_the_same_settings(small_corpus, tmp_path):
    from m3d_components.engines.demo import ensure_demo_llm

    sizes = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 64}
    path = Path(ensure_demo_llm(small_corpus, tmp_path / "llm", vocab_size=400, pretrain_steps=2, **sizes))
    made = (path / "config.json").stat().st_mtime_ns
    assert ensure_demo_llm(small_corpus, tmp_path / "llm", vocab_size=400, pretrain_steps=2, **sizes) == str(path)
    assert (path / "config.json").stat().st_mtime_ns == made
    ensure_demo_llm(small_corpus, tmp_path / "llm", vocab_size=400, pretrain_steps=3, **sizes)
    assert json.loads((path / "m3d_demo_model.json").read_text())["pretrain_steps"] == 3


def _tiny_segmenter_config():
    from m3d_components.models.segmentation import SegmenterConfig
    from m3d_components.models.vision import ViTConfig

    vit = ViTConfig(img_size=(32, 64, 64), patch_size=(8, 16, 16), hidden_size=16, mlp_dim=32, num_layers=1,
                    num_heads=2, cls_token=False, input_mean=0.29, input_std=0.2)
    return SegmenterConfig(vit=vit, depth=1, num_heads=2, mlp_dim=32)


def test_pretrained_segmenter_follows_its_class_prompt(small_corpus):
    """After class-prompted pre-training the mask depends on the prompt: each class's own prompt overlaps its
    training mask better than the prompt of another class present in the same scan does."""
    from m3d_components.data.masks import load_class_mask
    from m3d_components.data.seg import read_seg_split
    from m3d_components.data.volume import load_volume
    from m3d_components.engines.seg_pretrain import pretrain_segmenter
    from m3d_components.metrics.masks import hard_dice
    from m3d_components.models.segmentation import PromptableSegmenter

    manifest = json.loads((small_corpus / "manifest.json").read_text())
    records = read_seg_split(small_corpus / manifest["files"]["seg"], "train", small_corpus)
    with torch.random.fork_rng():  # a seeded start: 200 steps at 1e-2 from an unseeded one failed now and then
        torch.manual_seed(0)
        segmenter = PromptableSegmenter(_tiny_segmenter_config())
    prompts = pretrain_segmenter(segmenter, records, steps=400, batch_size=4, learning_rate=5e-3)
    own, other = [], []
    for image, group in itertools.groupby(records, key=lambda r: r["image"]):
        present = [r for r in group if load_class_mask(r["label"], (1, 32, 64, 64)).any()]
        volume = torch.from_numpy(load_volume(image))[None]
        for record, swapped in zip(present, present[1:] + present[:1]):
            target = torch.from_numpy(load_class_mask(record["label"], (1, 32, 64, 64)))[None]
            with torch.no_grad():
                for prompt, scores in ((prompts[record["class_name"]], own), (prompts[swapped["class_name"]], other)):
                    scores.append(float(hard_dice(segmenter(volume, prompt[None]) > 0, target)[0]))
    assert len(own) >= 12 and np.mean(own) > np.mean(other) + 0.1, (np.mean(own), np.mean(other))  # 0.57 vs 0.08


def test_demo_segmenter_is_reused_only_when_made_with_the_same_settings(small_corpus, tmp_path):
    from safetensors.torch import load_file

    from m3d_components.engines.demo import ensure_demo_segmenter
    from m3d_components.models.segmentation import PromptableSegmenter

    config = _tiny_segmenter_config()
    path = Path(ensure_demo_segmenter(small_corpus, tmp_path / "seg", config, steps=2))
    made = path.stat().st_mtime_ns
    assert ensure_demo_segmenter(small_corpus, tmp_path / "seg", config, steps=2) == str(path)
    assert path.stat().st_mtime_ns == made
    ensure_demo_segmenter(small_corpus, tmp_path / "seg", config, steps=3)
    assert json.loads((path.parent / "m3d_demo_model.json").read_text())["steps"] == 3
    assert set(load_file(path)) == set(PromptableSegmenter(config).state_dict())
