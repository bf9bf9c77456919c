"""What a run shows and leaves behind: a progress bar with the loss, the share of each epoch spent waiting for data,
and metrics as JSON with our canonical keys."""

from __future__ import annotations

import json
import logging
import numbers
import os
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, Timer

__all__ = ["DataWaitHandler", "LossProgressBar", "MetricsWriter"]

logger = logging.getLogger(__name__)


class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar showing the running iteration loss; attachable from a config handler list
    (MONAI calls ``attach(engine)`` with no other arguments)."""

    def attach(self, engine: Engine, *args, **kwargs) -> None:
        super().attach(engine, output_transform=lambda output: {"loss": float(output["loss"].detach())})


class DataWaitHandler:
    """Each epoch, the fraction of its wall time the engine spent waiting for the DataLoader: an approximation of
    the GPU idle fraction, which tells whether training is input-bound.

    Two Ignite ``Timer``, reset at ``EPOCH_STARTED``: one measures the epoch's wall time up to this handler's
    ``EPOCH_COMPLETED``; the other runs only between ``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED`` (and from the
    epoch's start to its first batch, which covers starting the loader's workers). At ``EPOCH_COMPLETED`` the ratio
    goes to ``engine.state.metrics[name]`` (the trainer's MLflow handler logs state metrics at each epoch) and to one
    INFO log line.

    Why waiting approximates GPU idleness: our training loop reads the loss on the host every iteration (the progress
    bar and the MLflow loss call ``float(loss)``), a device sync, so when the host asks for the next batch the GPU
    has finished all queued work and stays idle until the batch arrives and the next step is launched. It misses the
    smaller idle time inside a step (host work between kernels, ``prepare_batch``) and, without a per-step sync,
    would overstate idleness.

    Attach it before ``ValidationHandler`` (whose validation, at ``EPOCH_COMPLETED``, is then not counted) and before
    the MLflow handler (so the metric is there when it logs).

    Args:
        name: the metric key.
    """

    def __init__(self, name: str = "data_wait_fraction") -> None:
        self.name = name
        self.wait = Timer()
        self.epoch = Timer()

    def attach(self, engine: Engine) -> None:
        # Timer.reset (at EPOCH_STARTED) leaves the timer running: the wait until the first batch counts.
        self.wait.attach(engine, start=Events.EPOCH_STARTED, resume=Events.GET_BATCH_STARTED,
                         pause=Events.GET_BATCH_COMPLETED)
        self.epoch.attach(engine, start=Events.EPOCH_STARTED)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        waited, wall = self.wait.value(), self.epoch.value()
        fraction = min(waited / wall, 1.0) if wall > 0 else 0.0
        engine.state.metrics[self.name] = fraction
        logger.info("Epoch %d: waited %.2f s for data of %.2f s (%s %.3f)",
                    engine.state.epoch, waited, wall, self.name, fraction)


class MetricsWriter:
    """At the end of a run, write the engine's numeric metrics (and optional fixed fields) to ``path`` atomically.

    Args:
        path: output JSON file.
        extra: constant fields to include (e.g. the split and the weights evaluated).
    """

    def __init__(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        self.path = Path(path)
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {
            k: float(v)
            for k, v in sorted(engine.state.metrics.items())
            if isinstance(v, numbers.Number) and not isinstance(v, bool)
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({**self.extra, "metrics": metrics}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
