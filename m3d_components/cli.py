"""The ``m3d`` command line (Python Fire). It only wires arguments to library functions.

Heavy imports happen inside each command, so ``m3d --help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["M3DCommand", "main"]


def _shape(value: str | Sequence[int], name: str) -> tuple[int, ...]:
    """Accept ``32,64,64`` (Fire passes a tuple) or ``"32x64x64"``."""
    parts = value if isinstance(value, (tuple, list)) else str(value).replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--{name} must be integers like 32,64,64, got {value!r}") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"--{name} must be three positive integers D,H,W, got {value!r}")
    return shape


class PrepareCommand:
    """Convert raw data to the canonical (1, D, H, W) [0, 1] volumes the models read."""

    def volume(self, src: str, out: str, window: str = "abdomen", size="32,256,256", cache_dtype: str = "float32"):
        """A NIfTI file or DICOM series → OUT (.npy) + OUT.json sidecar that maps boxes and masks back.

        Args:
            src: .nii / .nii.gz file, DICOM series folder or .dcm file.
            out: output .npy path.
            window: abdomen, lung, bone, brain (CT presets) or percentile (0.5–99.5 %, for MRI).
            size: canonical D,H,W.
            cache_dtype: float32 (as published), float16 or uint8 (compact caches).
        """
        from m3d_components.data.ingest import prepare_volume, sidecar_path

        sidecar = prepare_volume(src, out, window=window, spatial_size=_shape(size, "size"), cache_dtype=cache_dtype)
        print(json.dumps({"out": str(out), "sidecar": str(sidecar_path(out)), "spatial_size": sidecar["spatial_size"]}))

    def m3d_cap(self, raw: str, out: str, size="32,256,256", cache_dtype: str = "float32", workers: int = 1,
                split="0.8,0.1,0.1", seed: int = 0, min_slices: int = 2):
        """The published raw M3D-Cap layout (series folders of slice images + text.txt) → .npy + M3D_Cap.json.

        Args:
            raw: folder holding ``ct_case/`` and/or ``ct_quizze/``.
            out: output root.
            size: canonical D,H,W.
            cache_dtype: float32 (as published), float16 or uint8 (compact caches).
            workers: processes converting series in parallel.
            split: train,validation,test fractions of the cases.
            seed: seed of the case shuffle behind the split.
            min_slices: series with fewer usable slices are skipped.
        """
        from m3d_components.data.prepare_cap import prepare_m3d_cap

        fractions = tuple(float(f) for f in _listed(split))
        print(json.dumps(prepare_m3d_cap(raw, out, spatial_size=_shape(size, "size"), cache_dtype=cache_dtype,
                                         workers=workers, split=fractions, seed=seed, min_slices=min_slices)))

    def m3d_seg(self, raw: str, out: str, size="32,256,256", cache_dtype: str = "float32",
                window: str = "percentile", codes=None, test_fraction: float = 0.2, seed: int = 0, workers: int = 1):
        """The raw M3D-Seg release (or a Decathlon NIfTI folder) → LaMed-ready per-class masks + per-dataset JSON.

        Args:
            raw: raw release root (``<code>/<code>.json`` folders), one code folder, or a folder with ``dataset.json``.
            out: output root; ``<dataset_dir>/M3D_Seg`` for the LaMed bundles.
            size: canonical D,H,W.
            cache_dtype: image dtype: float32, or a float16 / uint8 cache (masks are always bool).
            window: window for NIfTI scans (abdomen, lung, bone, brain or percentile); unused for the raw release.
            codes: convert only these dataset codes, e.g. 0003,0011 (default: all found; numbers are 4-digit codes).
            test_fraction: share of training cases held out when an input has no labelled test cases.
            seed: seed of that hold-out.
            workers: processes converting cases in parallel.
        """
        from m3d_components.data.prepare_seg import prepare_m3d_seg

        if codes is not None:  # fire reads 0000 as the number 0
            codes = [f"{c:04d}" if isinstance(c, int) else str(c) for c in _listed(codes)]
        print(json.dumps(prepare_m3d_seg(raw, out, spatial_size=_shape(size, "size"), cache_dtype=cache_dtype,
                                         window=window, codes=codes, test_fraction=test_fraction, seed=seed,
                                         workers=workers)))


class GenerateCommand:
    """Make instruction data for your own scans with a local LLM (VQA, its check) and from masks (REC/REG/SS/RES)."""

    def vqa(self, reports: str, llm: str, out: str, split: str = "train", root: str | None = None,
            n_questions: int = 9, max_report_words: int = 400, batch_size: int = 4, max_new_tokens: int = 64,
            min_question_words: int = 3, max_question_words: int = 40, max_choice_words: int = 12,
            limit: int | None = None, skip_invalid: bool = False):
        """Multiple-choice questions (plane, phase, organ, abnormality, position) from M3D-Cap reports → M3D-VQA CSV.

        Resumable: a rerun with the same --out skips the reports already done (OUT.progress.jsonl keeps each raw
        LLM reply). Prints how many questions each self-filtering rule removed (also in OUT.summary.json).

        Args:
            reports: the M3D-Cap split JSON (e.g. M3D_Cap.json).
            llm: local instruction-tuned LLM: a Hugging Face folder, a .gguf file or a folder holding one.
            out: the VQA CSV to write.
            split: which split of the JSON.
            root: data root of the JSON's paths (default: its folder).
            n_questions: questions per report (1–9, topics in the published order).
            max_report_words: shorten long reports to whole sentences within this many words.
            batch_size: reports per generation batch (each gives n_questions prompts).
            max_new_tokens: length limit of each reply line (question, choices, answer).
            min_question_words, max_question_words, max_choice_words: the length rule.
            limit: only the first N reports.
            skip_invalid: count and log unreadable report entries instead of stopping.
        """
        from m3d_components.data.generation.vqa import FilterLimits
        from m3d_components.engines.generate import generate_vqa

        limits = FilterLimits(min_question_words, max_question_words, max_choice_words)
        print(json.dumps(generate_vqa(reports, llm, out, split=split, data_root=root, n_questions=n_questions,
                                      max_report_words=max_report_words, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, limits=limits, limit=limit,
                                      skip_invalid=skip_invalid), indent=1))

    def check(self, vqa: str, llm: str, out: str | None = None, passed_out: str | None = None,
              batch_size: int = 8, max_new_tokens: int = 64, limit: int | None = None):
        """The LLM's second check of each VQA row against its report: Check (1 yes, 0 no, −1 unclear) + reason.

        Args:
            vqa: an M3D-VQA CSV with the source reports in its Text column.
            llm: local LLM path (folder or GGUF).
            out: the checked CSV (default: <vqa stem>_checked.csv); resumable.
            passed_out: also write the rows that passed, without the check columns.
            batch_size, max_new_tokens: generation settings.
            limit: only the first N rows.
        """
        from m3d_components.engines.generate import check_vqa

        print(json.dumps(check_vqa(vqa, llm, out=out, passed_out=passed_out, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, limit=limit), indent=1))

    def seg_instructions(self, seg: str, out: str, splits: str = "train,validation,test", root: str | None = None,
                         terms: str | None = None,
                         no_builtin_terms: bool = False, seed: int = 0, enhance: bool = False,
                         llm: str | None = None, rewordings: int = 3, batch_size: int = 8):
        """REC, REG, SS and RES instructions (class-name and definition variants, negatives) from image–mask pairs.

        Writes OUT/seg_instructions_<split>.jsonl, read by lamed_instruct and lamed_seg (``seg_instructions_dir``)
        and checked by ``m3d validate-data m3d-instructions``.

        Args:
            seg: an M3D-Seg folder in the LaMed-ready layout.
            out: output folder.
            splits: comma-separated splits (validation falls back to a dataset's test list when it has none).
            root: data root of the dataset JSONs' relative paths (default: the --seg folder).
            terms: comma-separated extra term dictionaries (class → definitions), later ones winning.
            no_builtin_terms: do not start from the package's organ definitions.
            seed: template draws depend on it only: the same input gives the same files.
            enhance: reword every definition with the local LLM (--llm) into --rewordings phrasings.
            llm: local LLM path for --enhance.
            rewordings, batch_size: rewording settings.
        """
        from m3d_components.engines.generate import generate_seg_instructions

        if enhance and not llm:
            raise ValueError("--enhance needs --llm (a local LLM folder or GGUF file)")
        split_list = splits if isinstance(splits, (tuple, list)) else str(splits).split(",")
        term_list = [] if terms is None else (terms if isinstance(terms, (tuple, list)) else str(terms).split(","))
        print(json.dumps(generate_seg_instructions(seg, out, splits=split_list, data_root=root, terms=term_list,
                                                   builtin_terms=not no_builtin_terms, seed=seed,
                                                   enhance_llm=llm if enhance else None, rewordings=rewordings,
                                                   batch_size=batch_size), indent=1))


class M3DCommand:
    """M3D: 3D medical image analysis with multi-modal LLMs, as MONAI bundles."""

    def __init__(self) -> None:
        self.prepare = PrepareCommand()
        self.generate = GenerateCommand()

    def demo(self, out: str = "demo_run"):
        """Run the demo end to end on CPU: corpus → M3D-CLIP → LaMed stages 1–2 → lamed_seg → M3D-Bench, then a table.

        Args:
            out: folder for checkpoints, metrics and the MLflow store (``<out>/<bundle>/eval/mlruns.db``).
        """
        from m3d_components.engines.pipeline import demo_table, run_demo

        results = run_demo(out)
        print(demo_table(results))
        print(f"MLflow store: sqlite:///{Path(out).resolve()}/<bundle>/eval/mlruns.db — open with `mlflow ui "
              f"--backend-store-uri <that URI>`")
        print(f"M3D-Bench report (value and 95 % interval per checkpoint): "
              f"{Path(out).resolve() / 'm3d_bench' / 'eval' / 'comparison.md'}")

    def infer(self, image: str, question: str | None = None, bundle: str = "lamed_instruct", demo: bool = False,
              demo_run: str = "demo_run", weights: str | None = None, out: str | None = None, **overrides):
        """Ask a trained LaMed about one scan (NIfTI, DICOM folder or canonical .npy): answer, boxes, box PNGs, and
        with ``--bundle lamed_seg`` the mask of a ``[SEG]`` answer (``mask.nii.gz`` on the scan's grid, overlay PNG).

        Runs ``configs/inference.json`` of the bundle (over ``train.json``, and ``demo.json`` with ``--demo``).

        Args:
            image: the scan.
            question: e.g. "Where is the liver in this image? Please give its box." or "Segment the liver."
                (default: the bundle's, a report for lamed_instruct, the liver for lamed_seg).
            bundle: the bundle to run (``lamed_instruct``, or ``lamed_seg`` for masks).
            demo: use the demo configuration (tiny models trained by ``m3d demo``).
            demo_run: with ``demo``, the ``m3d demo --out`` folder whose models are used (when it holds the
                bundle's; else the bundle's own ``models/demo`` from its demo runs).
            weights: trained weights (default: the bundle's stage-2 ``trained.safetensors``).
            out: folder for ``answer.json`` and PNGs (default: ``<output_dir>/inference``).
            overrides: any other config key, e.g. ``--window percentile`` for MRI (default ``abdomen``, a CT window
                in Hounsfield units; also ``lung``, ``bone``, ``brain``) or ``--llm_path /models/llama``.
        """
        from m3d_components.engines.paths import run_bundle

        configs, settings = _inference_run(bundle, demo, demo_run, weights, overrides)
        settings["image"] = str(Path(str(image)).resolve())
        if question is not None:
            settings["question"] = str(question)
        if out is not None:
            settings["inference_dir"] = str(Path(out).resolve())
        result = run_bundle(bundle, configs, **settings)[0]
        print(json.dumps(result, indent=2))

    def compare(self, store: str | None = None, out: str = "comparison", experiment: str | None = None,
                metrics: str | None = None):
        """Print the bench's MLflow runs side by side (value [95 % CI]); write ``<out>.md`` and a bar chart PNG.

        Args:
            store: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else the m3d_bench bundle's
                ``eval/mlruns.db``).
            out: output path without suffix.
            experiment: the MLflow experiment (default: ``MLFLOW_EXPERIMENT_NAME``, else ``m3d_bench``, as the bench
                logs).
            metrics: comma-separated metric names (default: the headline metrics present).
        """
        from m3d_components.engines.bench import compare_runs
        from m3d_components.engines.paths import find_bundle

        if store is None:
            store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{find_bundle('m3d_bench')}/eval/mlruns.db"
        names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else metrics
        print(compare_runs(store, out, experiment, names))
        print(f"written: {Path(out).with_suffix('.md')}, {Path(out).with_suffix('.png')}")

    def bench_speed(self, stages: str = "clip,lamed,seg,generate", scale: str = "tiny", steps: int = 10,
                    warmup: int = 2, json_out: str | None = None, compile_blocks: bool = False):
        """Time the training and generation steps, optimized against the reference-style configuration in the same
        process (samples/s, step time, peak memory, MFU on a GPU); prints a Markdown table.

        Args:
            stages: comma-separated, some of clip, lamed, seg, generate, loader (volumes/s through the augmentation).
            scale: tiny (the demo sizes, for a CPU) or paper (the paper's sizes; needs a large GPU).
            steps: timed steps per configuration (median and p10/p90 reported).
            warmup: untimed steps first.
            json_out: also write the figures, versions, device and command here.
            compile_blocks: also time the CLIP and LaMed steps with every transformer block compiled.
        """
        from m3d_components.engines.speed import main as speed_main

        names = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
        argv = ["--stages", *names, "--scale", scale, "--steps", str(steps), "--warmup", str(warmup)]
        argv += ["--json", json_out] if json_out else []
        speed_main([*argv, *(["--compile-blocks"] if compile_blocks else [])])

    def merge_lora(self, out: str, bundle: str = "lamed_instruct", demo: bool = False, demo_run: str = "demo_run",
                   weights: str | None = None, **overrides):
        """Merge a stage-2 LoRA checkpoint into its LLM and write a plain Hugging Face folder (+ vision weights).

        Args:
            out: the output folder (loads with ``AutoModelForCausalLM.from_pretrained(out)``, no peft needed).
            bundle, demo, demo_run, weights, overrides: as for ``m3d infer``.
        """
        from m3d_components.engines.paths import run_bundle

        configs, settings = _inference_run(bundle, demo, demo_run, weights, overrides)
        settings["merged_dir"] = str(Path(out).resolve())
        run_bundle(bundle, configs, run_id="merge", **settings)
        print(json.dumps({"merged": settings["merged_dir"]}))

    def export_monailabel(self, out: str, bundle: str = "lamed_seg", demo: bool = False, demo_run: str = "demo_run",
                          weights: str | None = None, **overrides):
        """Write a bundle the way MONAI Label reads one: a single ``configs/inference.json`` (train.json, demo.json
        with ``--demo`` and inference.json merged) and ``models/model.pt`` with the trained tensors.

        Point MONAI Label's bundle app at ``out`` (e.g. ``monailabel start_server --app monaibundle --conf models
        <name>`` with ``out`` under the app's model folder). The LLM and vision encoder stay at their own paths.

        Args:
            out: the output folder.
            bundle, demo, demo_run, weights, overrides: as for ``m3d infer`` (``--question`` sets the fixed prompt).
        """
        from m3d_components.engines.monailabel import export_bundle

        configs, settings = _inference_run(bundle, demo, demo_run, weights, overrides)
        print(json.dumps(export_bundle(bundle, configs, Path(out).resolve(), **settings)))

    def make_demo_data(self, out: str = "demo", n_train: int = 800, n_val: int = 40, n_test: int = 100,
                       size="32,64,64", seed: int = 0):
        """Write the synthetic demo corpus in every published M3D format (deterministic for a seed).

        Args:
            out: output folder.
            n_train: training cases.
            n_val: validation cases.
            n_test: test cases.
            size: volume D,H,W (32,64,64 for fast CPU demos; 32,256,256 is the paper size).
            seed: random seed; the same seed writes the same bytes.
        """
        from m3d_components.data.demo import make_demo_data

        manifest = make_demo_data(out, n_train=n_train, n_val=n_val, n_test=n_test, size=_shape(size, "size"), seed=seed)
        print(json.dumps({"out": str(out), "counts": manifest.get("counts")}))

    def validate_data(self, format: str, path: str, root: str | None = None, text_only: bool = False,
                      shape: str | None = None):
        """Check a dataset: one line per problem (file/row + reason), then a JSON summary; exit 1 on any error.

        Args:
            format: m3d-cap, m3d-vqa, m3d-seg, m3d-refseg or m3d-instructions (from `m3d generate seg-instructions`).
            path: the index file (split JSON / CSV) or, for m3d-seg, a per-dataset JSON or the M3D-Seg folder.
            root: data root that relative paths start from (default: the index file's folder).
            text_only: parse records only; do not open volumes and masks.
            shape: expected canonical C,D,H,W of every volume, e.g. 1,32,256,256 (default: any (1, D, H, W)).
        """
        from m3d_components.data.validate import validate_data

        image_shape = None
        if shape is not None:
            image_shape = tuple(int(v) for v in (shape if isinstance(shape, (tuple, list)) else str(shape).split(",")))
        report = validate_data(format, path, root=root, text_only=text_only, image_shape=image_shape)
        for line in report.problems:
            print(line)
        print(json.dumps(report.summary()))
        if report.problems:
            sys.exit(1)


def _inference_run(bundle: str, demo: bool, demo_run: str, weights: str | None,
                   overrides: dict) -> tuple[list[str], dict]:
    """The configs and settings of a run over a bundle's ``inference.json`` (infer, merge-lora, export-monailabel).

    With ``demo``, the ``m3d demo`` outputs in ``demo_run`` are used when that run made them: its CLIP vision encoder
    and the bundle's models folder (the demo overlay alone reads the bundle's ``models/demo``).
    """
    configs = ["train.json", *(["demo.json"] if demo else []), "inference.json"]
    settings: dict = {}
    run = Path(str(demo_run)).resolve()
    if demo and (run / bundle / "models").is_dir():
        settings = {"pretrained_vit": str(run / "clip_pretrain" / "models" / "vision_encoder.safetensors"),
                    "models_dir": str(run / bundle / "models")}
    settings.update(overrides)
    if weights is not None:
        settings["weights"] = str(Path(weights).resolve())
    return configs, settings


def _listed(value) -> list:
    """A list option as typed (``0.8,0.1,0.1``) or as fire read it (a tuple, or one number)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    return list(value) if isinstance(value, (tuple, list)) else [value]


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def user_error(error: BaseException) -> BaseException | None:
    """The outermost error in ``error``'s chain that explains a user's mistake (a bad file, row, setting or path).

    Config expressions re-raise every error as MONAI's generic "Failed to evaluate ConfigExpression"; the message
    that names the file or setting is further down the chain.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main() -> None:
    """``m3d``: a user's mistake ends with its message and exit status 2 (``M3D_DEBUG=1`` keeps the traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    import fire

    try:
        fire.Fire(M3DCommand(), name="m3d")
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a user's mistake
        cause = user_error(error)
        if cause is None or os.environ.get("M3D_DEBUG"):
            raise
        print(f"m3d: error: {cause}\n(M3D_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
