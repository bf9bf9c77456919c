"""``python -m MODULE ARGS`` for tests, without paying a fresh interpreter's imports each time.

A user's ``python -m monai.bundle run …`` spends ~15 s of a 2-core machine importing MONAI (it loads every
submodule), transformers, MLflow and this package before it reads a config; the test suite makes dozens of such
runs. :func:`run_module` runs the same module as ``__main__`` with the same arguments, environment and working
folder, in a process forked from a forkserver that imported those libraries once (and never ran a tensor
operation, so the child's thread pools start fresh). Output, exit status and a SIGKILL read as a subprocess's.
Launchers (``torchrun``) and checks of the interpreter itself still use :mod:`subprocess`.
"""

from __future__ import annotations

import atexit
import importlib.util
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = (
    "monai", "monai.bundle", "monai.handlers", "ignite.engine", "ignite.handlers", "ignite.metrics", "mlflow",
    "mlflow.store.tracking.sqlalchemy_store", "transformers", "transformers.models.llama.modeling_llama",
    "transformers.models.phi3.modeling_phi3", "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.bert.modeling_bert", "peft", "nibabel", "jsonschema", "sacrebleu", "fire", "matplotlib.pyplot",
)
PACKAGE = sorted(
    ".".join(("m3d_components", *path.relative_to(REPO / "m3d_components").with_suffix("").parts))
    for path in (REPO / "m3d_components").rglob("*.py") if path.stem not in ("__init__", "__main__")
)
_context = multiprocessing.get_context("forkserver")
# The server imports these (skipping any that fail: the run then imports, and reports, it itself).
_context.set_forkserver_preload([*LIBRARIES, *PACKAGE, __name__])


def _main(module: str, args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """The child: output to the two files, the caller's environment and folder, then ``python -m module args``."""
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_APPEND), fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path.insert(0, cwd)
    sys.argv = [module, *args]
    spec = importlib.util.find_spec(module)  # `python -m` runs a module that is not imported yet
    if spec is not None:
        sys.modules.pop(f"{module}.__main__" if spec.submodule_search_locations is not None else module, None)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:  # what interpreter exit does; multiprocessing then flushes the streams and exits with the status
        atexit._run_exitfuncs()


def run_module(module: str, *args: str, env: dict[str, str] | None = None, cwd: str | Path = REPO,
               timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` in a forked child; ``env`` is added to this process's environment."""
    command = [sys.executable, "-m", module, *args]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        child = _context.Process(target=_main, args=(module, list(args), {**os.environ, **(env or {})}, str(cwd),
                                                     str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout, out.read_text(errors="replace"),
                                            err.read_text(errors="replace"))
        return subprocess.CompletedProcess(command, child.exitcode, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

