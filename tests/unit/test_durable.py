"""The one durable-write helper (temp file + fsync + rename + fsync of the folder, issue 20)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ct_triage.models.durable import (
    durable_file,
    durable_path,
    fsync_dir,
    fsync_file,
    fsync_tree,
    write_durably,
)


def test_write_durably_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    write_durably(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def _write_half_then_fail(target: Path) -> None:
    with durable_file(target) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "truth.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        _write_half_then_fail(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.npz"]


def test_every_write_is_fsynced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(f"replace {Path(src).name.startswith('.in-')} {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_durably(tmp_path / "x.dcm", b"x", tmp_prefix=".in-", tmp_suffix=".part")
    assert events == ["fsync-file", "replace True x.dcm", "fsync-dir"]
    events.clear()
    fsync_file(tmp_path / "x.dcm")
    fsync_dir(tmp_path)
    assert events == ["fsync-file", "fsync-dir"]


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each ``fsync`` as ``file NAME`` or ``dir NAME`` (and each rename)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(f"{'dir' if os.path.isdir(target) else 'file'} {Path(target).name}")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _write_path_half_then_fail(target: Path) -> None:
    with durable_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")


def test_durable_path_fsyncs_what_the_writer_wrote_then_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_fsyncs(monkeypatch)
    target = tmp_path / "sr.dcm"
    with durable_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".sr.dcm.")
        tmp.write_bytes(b"dicom")  # a writer that takes a file name
    assert target.read_bytes() == b"dicom"
    assert events == [f"file {tmp.name}", "replace sr.dcm", f"dir {tmp_path.name}"]
    events.clear()
    with pytest.raises(RuntimeError, match="boom"):
        _write_path_half_then_fail(target)
    assert target.read_bytes() == b"dicom"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.dcm"]
    assert events == []


def test_fsync_tree_syncs_every_file_and_every_folder_after_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "upload"
    (root / "files" / "zip0").mkdir(parents=True)
    (root / "files" / "0.dcm").write_bytes(b"a")
    (root / "files" / "zip0" / "1.dcm").write_bytes(b"b")
    events = _record_fsyncs(monkeypatch)
    fsync_tree(root)
    assert sorted(events) == sorted(
        ["file 0.dcm", "file 1.dcm", "dir zip0", "dir files", "dir upload"]
    )
    assert events.index("file 1.dcm") < events.index("dir zip0") < events.index("dir files")
    assert events.index("dir files") < events.index("dir upload") == len(events) - 1
