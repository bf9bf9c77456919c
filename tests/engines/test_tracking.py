import mlflow
import pytest
import torch
from ignite.engine import Engine

from m3d_components.engines.tracking import TrackingHandler, experiment_name, mlflow_key, tracking_uri, unique_run_name


def _engine(fail_at: int | None = None) -> Engine:
    def step(engine, batch):
        if fail_at is not None and engine.state.iteration == fail_at:
            raise RuntimeError("boom")
        return {"loss": torch.tensor(1.0 / engine.state.iteration)}

    engine = Engine(step)

    @engine.on(__import__("ignite").engine.Events.EPOCH_COMPLETED)
    def _metrics(e):
        e.state.metrics.update({"val/itr/ir_r1@100": 0.5, "val/itr": {"nested": 1.0}, "flag": True})

    return engine


def _handler(tmp_path, name):
    return TrackingHandler(
        tracking_uri=tracking_uri(tmp_path), experiment_name="t", run_name=name,
        output_transform=lambda out: out["loss"].item(), tag_name="train/loss", close_on_complete=True,
        experiment_param={"lr": 0.1},
    )


def test_finished_run_with_mapped_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = unique_run_name("test")
    engine = _engine()
    _handler(tmp_path, name).attach(engine)
    engine.run(range(3), max_epochs=2)
    client = mlflow.MlflowClient(tracking_uri(tmp_path))
    run = client.search_runs(client.get_experiment_by_name("t").experiment_id)[0]
    assert run.info.status == "FINISHED" and run.info.run_name == name
    assert run.data.params["lr"] == "0.1"
    assert run.data.metrics["val/itr/ir_r1_at_100"] == 0.5 and "flag" not in run.data.metrics
    assert run.data.metrics["train/loss"] == pytest.approx(1 / 6)
    assert (tmp_path / "mlruns.db").is_file()


def test_failed_run_is_not_left_running(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    engine = _engine(fail_at=2)
    _handler(tmp_path, unique_run_name("fail")).attach(engine)
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(range(3), max_epochs=1)
    client = mlflow.MlflowClient(tracking_uri(tmp_path))
    run = client.search_runs(client.get_experiment_by_name("t").experiment_id)[0]
    assert run.info.status == "FAILED"


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "shared.db"))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "compare")
    assert tracking_uri(tmp_path / "x") == "sqlite:///" + str(tmp_path / "shared.db")
    assert experiment_name("clip_pretrain") == "compare"
    assert mlflow_key("itr/tr_r10@2000") == "itr/tr_r10_at_2000"
    assert unique_run_name("a") != unique_run_name("a")
