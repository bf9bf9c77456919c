"""lamed_seg end to end on the demo corpus: training from lamed_instruct's stage 2, Dice evaluation with explicit
negatives and the average-mask baseline, masks written on a real NIfTI's own grid, the MONAI Label entry, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ..launch import run_module
from .conftest import BUNDLES, bundle_run, check, checked_layout, eval_metrics, seg_dirs, with_generated_seg_instructions

BUNDLE = "lamed_seg"
TRAIN = ["train.json", "demo.json"]
EVALUATE = ["train.json", "evaluate.json", "demo.json"]
INFER = ["train.json", "demo.json", "inference.json"]
ITK_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")


def _dirs(demo_dir: Path, clip: Path, lamed: Path, out: Path) -> list[str]:
    return seg_dirs(demo_dir, clip, lamed, out)


def test_demo_segments_from_text_and_uses_the_image(seg_trained):
    """Issue 5's acceptance on the CPU demo (measured: ss / res Dice 0.657 / 0.601 against 0.006 / 0.002 for the
    image-free control and 0.200 / 0.216 for the training-average mask; docs/performance.md); the Dice bound leaves a
    little room for other CPUs' rounding. Masks follow the text and the image, and absent organs are refused."""
    m = eval_metrics(seg_trained / "eval" / "test")
    assert m["refseg/dice"] >= m["control/refseg/dice"] + 0.3, m
    for task in ("ss", "res"):
        assert m[f"{task}/dice"] >= 0.57 and m[f"{task}/dice"] >= m[f"{task}/baseline_dice"] + 0.3, m
        assert m[f"{task}/dice"] >= m[f"control/{task}/dice"] + 0.4, m
        assert m[f"{task}/mask_rate"] >= 0.85 and m[f"{task}/neg_acc"] >= 0.85, m  # a refusal only when absent
        assert m[f"{task}/dice_all"] >= m[f"control/{task}/dice_all"] + 0.2, m
        assert f"{task}/dice/demo/lesion" in m, m
        assert m[f"{task}/soft_dice"] <= m[f"{task}/dice"] + 0.05, m  # the published soft score, for parity


def test_predictions_record_masks_without_writing_them(seg_trained):
    rows = [json.loads(line) for line in (seg_trained / "eval" / "test" / "predictions.jsonl").open()]
    assert {r["task"] for r in rows} == {"ss", "res", "refseg"}
    assert all("seg" not in r and isinstance(r["has_mask"], bool) for r in rows)
    positives = [r for r in rows if "ss/dice" in r["scores"]]
    assert positives and all("[SEG]" in r["prediction"] or not r["has_mask"] for r in positives)


@pytest.fixture(scope="module")
def inference(seg_trained, demo_dir, clip_trained, lamed_trained):
    """inference.json parsed once, as MONAI Label and `monai.bundle run` parse it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / BUNDLE / "configs" / c) for c in INFER])
    overrides = _dirs(demo_dir, clip_trained, lamed_trained, seg_trained)
    parser.update({k.lstrip("-"): v for k, v in zip(overrides[::2], overrides[1::2])})
    parser["weights"] = str(seg_trained / "models" / "trained.safetensors")
    parser.parse()
    for i in range(len(parser["initialize"])):
        parser.get_parsed_content(f"initialize#{i}")
    return parser


def _nifti_of_a_demo_case(demo_dir: Path, path: Path) -> tuple[Path, list[str]]:
    """A demo test volume written as NIfTI on a non-canonical grid (axes reversed and permuted, anisotropic
    spacing), and the M3D-RefSeg questions about it."""
    import csv

    rows = list(csv.DictReader((demo_dir / "M3D_RefSeg_test.csv").open()))
    case = rows[0]["Image"]
    volume = np.load(demo_dir / case)[0]  # (D, H, W) running to inferior, posterior, left (IPL)
    # RAS-ordered array axes; values that the abdomen window (−160…240 HU) maps back to the demo's [0, 1]
    data = np.transpose(volume[::-1, ::-1, ::-1], (2, 1, 0)) * 400.0 - 160.0
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-30.0, 12.0, 40.0]
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path, [r["Question"] for r in rows if r["Image"] == case]


def test_mask_of_a_nifti_is_on_its_own_grid(inference, demo_dir, tmp_path):
    from m3d_components.engines.infer import answer_question

    scan, questions = _nifti_of_a_demo_case(demo_dir, tmp_path / "scan.nii.gz")
    network, tokenizer = inference.get_parsed_content("network").model, inference.get_parsed_content("tokenizer")
    for i, question in enumerate(questions[:4]):
        answer = answer_question(network, tokenizer, scan, question, tmp_path / f"q{i}", inference["image_size"])
        if answer["mask"] is not None and answer["mask"]["voxels"]:
            break
    assert answer["mask"] is not None and "[SEG]" in answer["answer"], answer
    source, written = nib.load(str(scan)), nib.load(answer["mask"]["path"])
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    voxels = np.argwhere(np.asarray(written.dataobj) > 0)
    box = [*voxels.min(axis=0), *voxels.max(axis=0)]
    assert np.abs(np.asarray(box) - np.asarray(answer["mask"]["source_box_voxel"])).max() <= 1, (box, answer)
    assert Path(answer["mask"]["png"]).is_file()
    refused = answer_question(network, tokenizer, scan, "Can you segment the brain in this image?",
                              tmp_path / "brain", inference["image_size"])
    assert (refused["mask"] is None) == ("[SEG]" not in refused["answer"])  # a mask exactly when one is asked for


@pytest.mark.skipif(not ITK_T1.is_file(), reason="Debian package insighttoolkit5-examples not installed")
def test_image_only_entry_as_monai_label_runs_it(inference):
    """MONAI Label's bundle app: preprocessing → inferer(image, network_def) → postprocessing, no text argument;
    the question is a displayable config. The mask comes back on the scan's own grid."""
    assert "question" in inference["displayable_configs"]
    data = inference.get_parsed_content("preprocessing")({"image": str(ITK_T1)})
    network = inference.get_parsed_content("network")
    data["pred"] = inference.get_parsed_content("inferer")(data["image"][None], network)[0]
    out = inference.get_parsed_content("postprocessing")(data)
    assert tuple(out["pred"].shape[1:]) == nib.load(str(ITK_T1)).shape
    assert set(torch.unique(out["pred"]).tolist()) <= {0.0, 1.0}


def test_exported_copy_loads_and_segments_as_monai_label_loads_it(inference, demo_dir, clip_trained, lamed_trained,
                                                                   seg_trained, tmp_path):
    """`m3d export-monailabel`, then MONAI Label's own steps on the copy: only `configs/inference.json` with
    `bundle_root` set to the copy, `network_def` built (here without its trained file), `models/model.pt` loaded
    with strict=False — the mask equals the bundle's."""
    from monai.bundle import ConfigParser

    import os

    copy = tmp_path / "lamed_seg"
    dirs = _dirs(demo_dir, clip_trained, lamed_trained, seg_trained)
    vit = dirs[dirs.index("--pretrained_vit") + 1]
    dirs[dirs.index("--pretrained_vit") + 1] = os.path.relpath(vit, tmp_path)  # as typed in tmp_path
    result = run_module("m3d_components.cli", "export-monailabel", str(copy), "--demo", *dirs,
                        "--weights", str(seg_trained / "models" / "trained.safetensors"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (copy / "configs").iterdir()) == [
        "inference.json", "logging.conf", "metadata.json", "settings_schema.json"]
    assert json.loads((copy / "configs" / "inference.json").read_text())["pretrained_vit"] == str(Path(vit).resolve())

    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.json"))
    parser.config.update({"bundle_root": str(copy), "weights": None})  # model.pt alone brings the training
    network = parser.get_parsed_content("network_def", instantiate=True)
    untrained = {k: v.clone() for k, v in network.state_dict().items()}
    state = torch.load(copy / "models" / "model.pt", weights_only=True)
    loaded = network.load_state_dict(state, strict=False)
    assert state and not loaded.unexpected_keys
    assert any(k.startswith("model.segmenter.") for k in state) and any("lora_" in k for k in state)
    assert any(not torch.equal(untrained[k], v) for k, v in state.items())

    scan, _ = _nifti_of_a_demo_case(demo_dir, tmp_path / "case.nii.gz")
    masks = []
    for config, net in ((parser, network), (inference, inference.get_parsed_content("network"))):
        data = config.get_parsed_content("preprocessing")({"image": str(scan)})
        data["pred"] = config.get_parsed_content("inferer")(data["image"][None], net)[0]
        masks.append(config.get_parsed_content("postprocessing")(data)["pred"])
    assert masks[0].any() and torch.equal(masks[0], masks[1])  # the liver, found by both


def test_two_process_gloo_training(demo_dir, clip_trained, lamed_trained, tmp_path, clean_mlflow_env):
    """multi_gpu_train.json under torchrun (gloo on CPU), with packed batches: batches without a mask leave the
    segmenter unused, which DDP must tolerate (find_unused_parameters)."""
    import sys

    import mlflow
    from safetensors.torch import load_file

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = bundle_run(BUNDLE, [*TRAIN, "multi_gpu_train.json"], *_dirs(demo_dir, clip_trained, lamed_trained, tmp_path),
                        "--samples_per_epoch", "64", "--val_samples_per_task", "4", "--pack_sequences", "True",
                        launcher=launcher)
    check(result)
    assert "replicas in sync" in result.stdout  # ReplicaSyncCheck compared both ranks' weights at the end
    trained = load_file(str(tmp_path / "models" / "trained.safetensors"))
    assert any(k.startswith("segmenter.") for k in trained) and any("lora_" in k for k in trained)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = client.search_runs(client.get_experiment_by_name(BUNDLE).experiment_id)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["pack_sequences"] == "True"


def test_clear_errors_before_any_training(demo_dir, clip_trained, tmp_path):
    dirs = _dirs(demo_dir, clip_trained, tmp_path, tmp_path)
    missing = bundle_run(BUNDLE, TRAIN, *dirs)
    assert missing.returncode != 0 and "run lamed_instruct stage 2 first" in missing.stderr
    bad = bundle_run(BUNDLE, TRAIN, *dirs, "--trainable", "['segmenter', 'decoder']")
    assert bad.returncode != 0 and "trainable" in bad.stderr and "'decoder' is not one of" in bad.stderr


def test_bundle_layout_and_metadata():
    meta = checked_layout(BUNDLE)
    assert "monailabel" in meta["supported_apps"]
    assert list(meta["network_data_format"]["inputs"]) == ["image"]  # MONAI Label takes the first input as the image


def test_generated_seg_instructions_feed_every_mask_task(demo_dir, tmp_path):
    """`m3d generate seg-instructions` output replaces the templated REC/REG/SS/RES samples (`seg_instructions_dir`);
    M3D-RefSeg still comes from its CSV."""
    from m3d_components.data.instruction_file import InstructionFileDataset

    summary, parser = with_generated_seg_instructions(BUNDLE, demo_dir, tmp_path)
    datasets = parser.get_parsed_content("train#datasets")
    assert {"ss", "res"} <= set(datasets)  # the demo's mixture: no REC/REG here
    for task in {"rec", "reg", "ss", "res"} & set(datasets):
        assert isinstance(datasets[task], InstructionFileDataset), task
    assert len(datasets["ss"]) == summary["splits"]["train"]["ss/label"]
    assert not isinstance(datasets["refseg"], InstructionFileDataset)
    sample = datasets["res"][0]
    assert sample["task"] == "res" and sample["seg"].shape[1:] == (32, 64, 64)
