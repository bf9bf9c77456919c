"""Text similarity for generated reports and answers, each computed by the library the field uses.

BLEU-1 by sacrebleu, ROUGE-1 / ROUGE-L by rouge-score, METEOR by NLTK (on WordNet 3.0 from the Debian packages
``wordnet-base`` + ``wordnet-sense-index``, or an NLTK data folder), BERTScore-F1 by bert-score with a model from a
local folder. All are per sample, with the published settings: BLEU with maximum order 1 and brevity penalty, ROUGE
F-measures without stemming, METEOR α 0.9 / β 3 / γ 0.5, BERTScore without idf weighting or baseline rescaling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from sacrebleu.metrics import BLEU

__all__ = ["TEXT_METRICS", "bertscore_f1", "bleu1", "meteor", "rouge", "text_scores", "word_tokens", "wordnet_dir"]

TEXT_METRICS = ("bleu", "rouge1", "rougeL", "meteor", "bertscore_f1")

_BLEU1 = BLEU(max_ngram_order=1, effective_order=True)
DEBIAN_WORDNET = Path("/usr/share/wordnet")
# WordNet 3.0 lexicographer files in number order (lexnames(5WN)); NLTK needs them as ``lexnames``, which the Debian
# packages do not ship.
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_POS_CODE = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def bleu1(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-sample BLEU-1 in [0, 1] with brevity penalty (the published protocol: unigram BLEU, 13a tokenizer)."""
    _check(predictions, references)
    return [_BLEU1.sentence_score(p.strip(), [r.strip()]).score / 100 for p, r in zip(predictions, references)]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-sample ROUGE-1 and ROUGE-L F-measures (rouge-score, no stemming)."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores = [scorer.score(r.strip(), p.strip()) for p, r in zip(predictions, references)]
    return {name: [s[name].fmeasure for s in scores] for name in ("rouge1", "rougeL")}


def wordnet_dir(cache: str | os.PathLike | None = None) -> Path:
    """An NLTK data folder holding WordNet 3.0: NLTK's own if it has WordNet, else one made (once) from the Debian
    files in ``/usr/share/wordnet`` (copied, 8 MB) with the missing ``lexnames`` written, added to NLTK's data paths.

    Raises:
        FileNotFoundError: with the install command, when neither exists (nothing is downloaded).
    """
    import nltk

    for root in nltk.data.path:
        if (Path(root) / "corpora" / "wordnet" / "lexnames").is_file():
            return Path(root)
    if not (DEBIAN_WORDNET / "data.noun").is_file() or not (DEBIAN_WORDNET / "index.sense").is_file():
        raise FileNotFoundError(
            "METEOR needs WordNet 3.0 and none was found: `apt-get install wordnet-base wordnet-sense-index` "
            "(or put NLTK's wordnet corpus under $NLTK_DATA); nothing is downloaded at run time"
        )
    root = Path(cache or os.environ.get("M3D_CACHE", Path.home() / ".cache" / "m3d")) / "nltk_data"
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for source in DEBIAN_WORDNET.iterdir():  # copied: NLTK refuses files that resolve outside its data path
            shutil.copyfile(source, target / source.name)
        lines = [f"{i:02d}\t{name}\t{_POS_CODE[name.split('.')[0]]}" for i, name in enumerate(_LEXNAMES)]
        (target / "lexnames").write_text("\n".join(lines) + "\n")
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # NLTK reads corpora only under its data paths
    return root


@lru_cache(maxsize=1)
def _wordnet():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    return WordNetCorpusReader(str(wordnet_dir() / "corpora" / "wordnet"), None)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def word_tokens(text: str) -> list[str]:
    """Words as ``nltk.word_tokenize`` (the tokenizer of the published protocol's METEOR) splits them: sentence by
    sentence, so that "normal." inside a report becomes "normal" and "." as it does at the end. A punctuation rule
    stands in for the Punkt sentence model, whose data would have to be downloaded."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    return [token for sentence in sentences for token in _word_tokenizer().tokenize(sentence)]


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def meteor(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-sample METEOR (NLTK, α 0.9, β 3, γ 0.5) on :func:`word_tokens`."""
    from nltk.translate.meteor_score import meteor_score

    _check(predictions, references)
    wordnet = _wordnet()
    return [float(meteor_score([word_tokens(r)], word_tokens(p), wordnet=wordnet))
            for p, r in zip(predictions, references)]


def bertscore_f1(
    predictions: Sequence[str], references: Sequence[str], model: str | os.PathLike, num_layers: int | None = None,
    batch_size: int = 64, device: str | None = None,
) -> list[float]:
    """Per-sample BERTScore F1 with the encoder in the local folder ``model`` (no idf, no baseline rescaling); an
    empty answer scores 0.

    Args:
        model: a local Hugging Face encoder folder (the published protocol uses roberta-large; any BERT-like works).
        num_layers: the layer whose states are compared (default: bert-score's choice for that model, e.g. 17 for
            ``roberta-large``, recognised by its folder, cache folder or ``config.json`` name; else the model's last).

    Raises:
        FileNotFoundError: when ``model`` is not a local folder (hub ids are not fetched).
    """
    import bert_score
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    _check(predictions, references)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"BERTScore model {model!r} is not a local model folder (nothing is downloaded)")
    layers = num_layers or _tuned_layer(path, model2layers) or AutoConfig.from_pretrained(path).num_hidden_layers
    pairs = [(i, p.strip(), r.strip()) for i, (p, r) in enumerate(zip(predictions, references))]
    scored = [(i, p, r) for i, p, r in pairs if p and r]  # an empty text has no token to match: F1 0
    out = [0.0] * len(pairs)
    if scored:
        _, _, f1 = bert_score.score(
            [p for _, p, _ in scored], [r for _, _, r in scored], model_type=str(path), num_layers=layers,
            batch_size=batch_size, device=device, idf=False, rescale_with_baseline=False,
        )
        for (i, _, _), value in zip(scored, f1.tolist()):
            out[i] = float(value)
    return out


def _tuned_layer(path: Path, tuned: dict[str, int]) -> int | None:
    """bert-score's tuned layer for the model in ``path`` (roberta-large: 17, as the published protocol used): found
    by the folder's name, by a Hugging Face cache folder's (``models--roberta-large/snapshots/<hash>``) or by the
    name in its ``config.json``."""
    names = [path.name]
    if path.parent.name == "snapshots":
        names.append(path.parent.parent.name.removeprefix("models--").replace("--", "/"))
    names.append(str(json.loads((path / "config.json").read_text()).get("_name_or_path", "")))
    for name in names:
        for candidate in (name, name.rsplit("/", 1)[-1]):
            if candidate in tuned:
                return tuned[candidate]
    return None


def text_scores(
    predictions: Sequence[str], references: Sequence[str], bertscore_model: str | os.PathLike | None = None,
    use_meteor: bool = True,
) -> dict[str, list[float]]:
    """Every text metric per sample: ``bleu``, ``rouge1``, ``rougeL``, ``meteor`` (unless switched off) and
    ``bertscore_f1`` (when a model folder is given)."""
    scores = {"bleu": bleu1(predictions, references), **rouge(predictions, references)}
    if use_meteor:
        scores["meteor"] = meteor(predictions, references)
    if bertscore_model is not None:
        scores["bertscore_f1"] = bertscore_f1(predictions, references, bertscore_model)
    return scores
