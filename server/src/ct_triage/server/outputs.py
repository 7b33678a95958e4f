"""All-or-nothing result folders: OUT holds complete results or none.

A result folder that cannot be written (a path under a file, no permission, a read-only or
full file system) is an :class:`OutputError`: one line naming OUT and the cause, never a
traceback (``ct-triage`` exit 1, see :mod:`ct_triage.server.cli`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ct_triage.models.durable import fsync_dir, fsync_tree
from ct_triage.models.errors import TriageError

logger = logging.getLogger(__name__)

#: The file whose presence marks a folder as a complete chest-ct-triage result.
REPORT_NAME = "report.json"


class OutputError(TriageError):
    """The output folder cannot be used (not empty and not a previous result, or unwritable)."""


#: Errors of writing that mean "the output file system cannot take the results".
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _cannot_write(out: Path, exc: OSError) -> OutputError:
    cause = exc.strerror or type(exc).__name__
    return OutputError(f"cannot write results to {out}: {cause}")


def _writable_ancestor(out: Path) -> Path | None:
    """The nearest existing folder above ``out``, or ``None`` when a file is in the way."""
    for parent in out.parents:
        if parent.exists():
            return parent if parent.is_dir() else None
    return None


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
    # Results are staged beside OUT and renamed into place: its folder must be writable.
    parent = _writable_ancestor(out.absolute())
    if parent is None:
        raise OutputError(f"cannot write results to {out}: a file is in the way of the path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write results to {out}: {parent} is not writable")


@contextmanager
def atomic_output_dir(out: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success it replaces ``out`` atomically.

    ``out`` may be absent, empty, or a previous result (it holds ``report.json``); anything
    else is refused so that a typo never deletes a user's files. On any exception the
    staging folder is removed and ``out`` is left as it was.
    """
    out = out.resolve()
    check_output_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise _cannot_write(out, exc) from exc
    try:
        yield staging
        fsync_tree(staging)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "result")
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
        fsync_dir(out.parent)  # the rename itself
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # A full or read-only file system, or any failure on a path of the staging folder
        # or OUT (both ours): the results cannot be written.
        inside = exc.filename is not None and str(exc.filename).startswith((str(staging), str(out)))
        if exc.errno in _WRITE_ERRNOS or inside:
            raise _cannot_write(out, exc) from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
