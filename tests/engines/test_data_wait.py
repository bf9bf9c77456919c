"""DataWaitHandler on a real MONAI SupervisedTrainer: input-bound vs. compute-bound epochs, the MLflow metric, and
its place in every training bundle's handlers (configs parsed, nothing trained)."""

import logging
import time
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from torch.utils.data import DataLoader, Dataset

from m3d_components.engines.reports import DataWaitHandler
from m3d_components.engines.tracking import TrackingHandler, tracking_uri

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
TRAINING_BUNDLES = ["clip_pretrain", "lamed_instruct", "lamed_seg"]


class Samples(Dataset):
    """Eight tiny samples, each taking ``delay`` seconds to load."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        time.sleep(self.delay)
        return {"image": torch.full((4,), float(index)), "label": torch.ones(1)}


class SlowLinear(torch.nn.Linear):
    """A linear layer whose forward takes ``delay`` seconds longer: a stand-in for a long GPU step."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(4, 1)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return super().forward(x)


def _train(load_delay: float, step_delay: float, epochs: int = 2, handlers: tuple = ()) -> list[float]:
    """Train two epochs of four batches; return the fraction each epoch put in ``engine.state.metrics``."""
    network = SlowLinear(step_delay)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=DataLoader(Samples(load_delay), batch_size=2),
        network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.01), loss_function=torch.nn.MSELoss(),
        train_handlers=[DataWaitHandler(), *handlers], decollate=False,
    )
    fractions = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: fractions.append(e.state.metrics["data_wait_fraction"]))
    trainer.run()
    return fractions


def test_input_bound_epochs_wait_most_of_the_time(caplog):
    with caplog.at_level(logging.INFO, logger="m3d_components.engines.reports"):
        fractions = _train(load_delay=0.02, step_delay=0.0)
    assert len(fractions) == 2 and all(0.5 < f <= 1.0 for f in fractions), fractions
    lines = [r.getMessage() for r in caplog.records if "data_wait_fraction" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("Epoch 1: waited ") and " s for data of " in lines[0], lines


def test_compute_bound_epochs_rarely_wait():
    fractions = _train(load_delay=0.0, step_delay=0.02)
    assert len(fractions) == 2 and all(0.0 <= f < 0.2 for f in fractions), fractions


def test_fraction_reaches_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    tracker = TrackingHandler(tracking_uri=uri, experiment_name="wait", run_name="wait-run", tag_name="train/loss",
                              output_transform=lambda out: out["loss"].item(), close_on_complete=True)
    fractions = _train(load_delay=0.02, step_delay=0.0, handlers=(tracker,))
    client = mlflow.MlflowClient(uri)
    run = client.search_runs(client.get_experiment_by_name("wait").experiment_id)[0]
    history = client.get_metric_history(run.info.run_id, "data_wait_fraction")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(fractions)


@pytest.mark.parametrize("bundle", TRAINING_BUNDLES)
def test_every_training_bundle_measures_data_wait(bundle):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    handlers = parser["train#handlers"]
    targets = [h["_target_"] for h in handlers]
    index = targets.index("m3d_components.engines.reports.DataWaitHandler")
    # before validation (not counted in the epoch) and MLflow (which logs the metric), rank 0 like the loggers
    assert index < targets.index("ValidationHandler")
    assert index < targets.index("m3d_components.engines.tracking.TrackingHandler")
    assert handlers[index].get("_disabled_") == "@is_not_rank0"
    assert isinstance(parser.get_parsed_content(f"train#handlers#{index}"), DataWaitHandler)
