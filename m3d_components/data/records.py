"""What every reader shares: resolving paths under ``data_root``, and one policy for invalid records.

A reader turns an index file (JSON split, CSV) into a list of plain dict records and reports each bad record to an
``on_error`` callback: by default the error is raised, with ``skip_invalid`` it is counted and logged
(:class:`~m3d_components.data.errors.SkipLog`), and ``m3d validate-data`` collects them to print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from m3d_components.data.errors import DataError, SkipLog

__all__ = ["ErrorHandler", "error_handler", "raise_error", "resolve_path"]

ErrorHandler = Callable[[DataError], None]


def raise_error(error: DataError) -> None:
    """The default policy: a bad record stops the run, with its file and row in the message."""
    raise error


def error_handler(name: str, skip_invalid: bool, on_error: ErrorHandler | None = None) -> tuple[ErrorHandler, SkipLog]:
    """Pick the policy for a reader: an explicit ``on_error``, else skip-and-count or raise."""
    log = SkipLog(name)
    if on_error is not None:
        return on_error, log
    return (log.skip if skip_invalid else raise_error), log


def resolve_path(
    value: object, data_root: str | os.PathLike | None, source: str, row: int | str, column: str, check: bool
) -> Path:
    """Turn a path cell into an absolute :class:`Path` under ``data_root`` (absolute paths are kept).

    Raises:
        DataError: an empty cell, or (with ``check``) a file that does not exist.
    """
    if not isinstance(value, str) or not value.strip():
        raise DataError(source, f"'{column}' is empty", row)
    path = Path(value.strip())
    if not path.is_absolute() and data_root is not None:
        path = Path(data_root) / path
    if check and not path.is_file():
        where = f" under data_root {str(data_root)!r}" if data_root is not None else ""
        raise DataError(source, f"{column} {value!r} not found{where}", row)
    return path
