"""All-or-nothing result folders: OUT holds complete results or none."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ct_triage.models.errors import TriageError

logger = logging.getLogger(__name__)

#: The file whose presence marks a folder as a complete chest-ct-triage result.
REPORT_NAME = "report.json"


class OutputError(TriageError):
    """The output folder cannot be used (not empty and not a previous result)."""


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def check_output_dir(out: Path) -> None:
    """Refuse an output path that is a file, or a non-empty folder that is not a result."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"output path {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / REPORT_NAME).is_file():
            raise OutputError(
                f"output folder {out} is not empty and holds no previous {REPORT_NAME}; "
                "choose an empty or new folder"
            )


@contextmanager
def atomic_output_dir(out: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success it replaces ``out`` atomically.

    ``out`` may be absent, empty, or a previous result (it holds ``report.json``); anything
    else is refused so that a typo never deletes a user's files. On any exception the
    staging folder is removed and ``out`` is left as it was.
    """
    out = out.resolve()
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "result")
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
