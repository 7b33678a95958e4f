"""Durable file writes: the one temporary file + ``fsync`` + rename + ``fsync`` of the folder.

A file written with :func:`write_durably` (or :func:`durable_file`) either exists complete or
not at all, also after a power cut: the bytes go to a temporary file in the destination
folder (or in ``tmp_dir`` on the same file system), are flushed and ``fsync``-ed, renamed
over the destination with :func:`os.replace` (atomic on POSIX), and the folder is
``fsync``-ed so that the new directory entry is on disk too.

Standard library only, so that every part can use it (the bridge, the server, the compute
package); it knows nothing of DICOM.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "durable_file",
    "durable_path",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "write_durably",
]


def fsync_file(path: Path | str) -> None:
    """``fsync`` a file that is already written and closed (e.g. a copy or a hard link)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    """``fsync`` a folder so that the creations and renames inside it are durable (POSIX)."""
    fsync_file(path)


@contextlib.contextmanager
def durable_file(
    path: Path,
    *,
    tmp_dir: Path | None = None,
    tmp_prefix: str | None = None,
    tmp_suffix: str = ".tmp",
) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` durably when the block succeeds.

    Parameters
    ----------
    path
        The destination; its folder must exist.
    tmp_dir
        Where the temporary file is made (default: the folder of ``path``); it must be on the
        same file system.
    tmp_prefix, tmp_suffix
        Name parts of the temporary file (default prefix: ``.<name>.``), so that readers of the
        folder can tell it from finished files.

    Raises
    ------
    OSError
        On any failure of writing; the temporary file is removed and ``path`` is untouched.
    """
    folder = path.parent
    fd, tmp = tempfile.mkstemp(
        dir=folder if tmp_dir is None else tmp_dir,
        prefix=f".{path.name}." if tmp_prefix is None else tmp_prefix,
        suffix=tmp_suffix,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_durably(
    path: Path,
    data: bytes,
    *,
    tmp_dir: Path | None = None,
    tmp_prefix: str | None = None,
    tmp_suffix: str = ".tmp",
) -> None:
    """Write ``data`` to ``path`` durably (see :func:`durable_file` for the parameters)."""
    with durable_file(path, tmp_dir=tmp_dir, tmp_prefix=tmp_prefix, tmp_suffix=tmp_suffix) as fh:
        fh.write(data)


@contextlib.contextmanager
def durable_path(path: Path, *, tmp_suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a file name.

    When the block succeeds the file written there is ``fsync``-ed and replaces ``path``, and
    the folder is ``fsync``-ed (as :func:`durable_file`); on any exception it is removed and
    ``path`` is untouched. The folder of ``path`` must exist.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{tmp_suffix}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_tree(root: Path | str) -> None:
    """``fsync`` every file and folder under ``root`` (and ``root``), folders after their
    content, so that a tree written without ``fsync`` is on disk before it is renamed into
    place or acknowledged. Symbolic links are not followed."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(dirpath)
