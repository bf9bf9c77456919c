"""Locating a bundle folder, so ``python -m monai.bundle run --config_file bundles/X/configs/train.json`` works from
the repository root, from inside the bundle, or from anywhere with an editable install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["find_bundle", "run_bundle"]


def find_bundle(name: str) -> str:
    """Absolute path of bundle ``name``: ``./bundles/<name>``, the current folder if it is that bundle, or the
    ``bundles/<name>`` beside the installed package (editable installs). Pass ``--bundle_root`` to choose another.

    Raises:
        FileNotFoundError: when none of these holds ``configs/``.
    """
    here = Path.cwd()
    package_repo = Path(__file__).resolve().parents[2]
    candidates = [here / "bundles" / name, here, here.parent / name, package_repo / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and (candidate / "configs").is_dir():
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"bundle {name!r} not found from {here} (looked in {[str(c) for c in candidates]}); pass --bundle_root"
    )


def run_bundle(bundle: str, configs: list[str], run_id: str = "run", **overrides: Any) -> list:
    """Run ``bundles/<bundle>/configs/<configs…>`` as ``python -m monai.bundle run`` would, in this process.

    Returns:
        the values of the ``run_id`` expressions.
    """
    from monai.bundle import ConfigWorkflow

    from m3d_components.engines.settings import check_overrides

    root = Path(find_bundle(bundle)) / "configs"
    files = [str(root / c) for c in configs]
    check_overrides(files, overrides, f"{bundle} ({', '.join(configs)})")
    workflow = ConfigWorkflow(
        config_file=files, logging_file=str(root / "logging.conf"), workflow_type=None,
        run_id=run_id, **overrides,
    )
    workflow.initialize()
    try:
        return workflow.run()
    finally:
        workflow.finalize()
