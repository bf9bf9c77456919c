"""MLflow tracking for every bundle: where runs go, what they are called, and how they end.

* Store: a SQLite file in the run's output folder, unless ``MLFLOW_TRACKING_URI`` is set (then many bundles can share
  one store); ``MLFLOW_EXPERIMENT_NAME`` likewise overrides the experiment.
* Names: every run gets a unique name (MONAI's handler would otherwise attach to the latest unfinished run).
* End: FINISHED on completion and FAILED when the engine raises, never left RUNNING.
* Keys: our metric keys (``itr/ir_r1@100``) contain ``@``, which MLflow forbids; it is logged as ``_at_``
  (``itr/ir_r1_at_100``). Non-numeric entries of ``engine.state.metrics`` are not logged.
"""

from __future__ import annotations

import logging
import numbers
import os
import time
import uuid
from pathlib import Path

from ignite.engine import Engine
from monai.handlers import MLFlowHandler

__all__ = ["TrackingHandler", "experiment_name", "mlflow_key", "tracking_uri", "unique_run_name"]

logger = logging.getLogger(__name__)


def tracking_uri(output_dir: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<output_dir>/mlruns.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(output_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlruns.db'}"


def experiment_name(default: str) -> str:
    """``MLFLOW_EXPERIMENT_NAME`` if set, else the bundle's default."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or default


def unique_run_name(prefix: str) -> str:
    """``<prefix>-<UTC time>-<6 hex>``: unique even for runs started in the same second."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def mlflow_key(key: str) -> str:
    """Our metric key in a form MLflow accepts (it allows letters, digits, ``_ - . / :`` and space)."""
    return key.replace("@", "_at_")


class TrackingHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` with our key mapping, numeric filtering and FAILED status on errors.

    Takes the same arguments; ``artifact_location`` defaults to an ``mlruns/`` folder beside a SQLite store.
    """

    def __init__(self, *args, **kwargs) -> None:
        uri = kwargs.get("tracking_uri")
        if uri and str(uri).startswith("sqlite:///") and not kwargs.get("artifact_location"):
            kwargs["artifact_location"] = str(Path(str(uri)[len("sqlite:///"):]).parent / "mlruns")
        super().__init__(*args, **kwargs)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        # Ignite stops at the first EXCEPTION_RAISED handler that raises (StatsHandler does), so a handler there may
        # never run; wrapping this engine's ``run`` marks the run FAILED whatever ends it (error, Ctrl-C, kill).
        run = engine.run

        def tracked_run(*args, **kwargs):
            try:
                return run(*args, **kwargs)
            except BaseException as error:
                self._mark_failed(error)
                raise

        engine.run = tracked_run  # type: ignore[method-assign]

    def _mark_failed(self, error: BaseException) -> None:
        if self.cur_run:
            logger.error("MLflow run %s marked FAILED: %r", self.cur_run.info.run_name, error)
            self.client.set_terminated(self.cur_run.info.run_id, "FAILED")
            self.cur_run = None

    def _log_metrics(self, metrics: dict, step: int | None = None) -> None:
        numeric = {
            mlflow_key(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, numbers.Number) and not isinstance(v, bool)
        }
        if numeric:
            super()._log_metrics(numeric, step)
