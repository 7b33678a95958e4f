"""Hostile and careless inputs at the DICOM listener and at delivery (issue 16 items 6, 7).

Item 6: the Storage SCP refuses, with a failure status and an ErrorComment, a CT image it
could never load (no Pixel Data, pixels cut short, Rows 65535, no valid position ...), so
that one such instance never makes its series decline; the series still analyses from its
good instances, and a later good copy of the refused SOP Instance UID is stored. A Hypothesis
fuzzer C-STOREs mutated instances (the mutations of ``tests/unit/test_fuzz_analyze.py`` that
one instance shows by itself) and checks the same property.

Item 7: one destination that accepts TCP and never answers does not delay another; the
timeouts of each step (connect, association, each C-STORE) come from the settings.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from hostile_series import analyze_env, run_analyze, write_small_phantom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from ct_triage.dicom_bridge.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_SUCCESS,
    StorageSCP,
)
from ct_triage.dicom_bridge.spool import Spool

pytestmark = pytest.mark.integration

N_SLICES = 16
REFUSED = {STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, STATUS_CANNOT_UNDERSTAND}


# --- helpers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One C-STORE response as the sender sees it."""

    status: int
    comment: str


def _scu() -> AE:
    ae = AE(ae_title="HOSTILE_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def _send(port: int, items: Sequence[Dataset | Path]) -> list[Answer | None]:
    """C-STORE each item on one association; ``None`` where the SCU itself cannot send it."""
    assoc = _scu().associate("127.0.0.1", port, ae_title="CT_TRIAGE")
    assert assoc.is_established
    answers: list[Answer | None] = []
    try:
        for item in items:
            try:
                rsp = assoc.send_c_store(item)
            except (ValueError, AttributeError, TypeError, OSError):
                answers.append(None)  # e.g. no SOP Class UID: nothing reaches the SCP
                continue
            assert "Status" in rsp, "no C-STORE response"
            answers.append(Answer(int(rsp.Status), str(rsp.get("ErrorComment", "") or "")))
    finally:
        assoc.release()
    return answers


def _read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def _analyse(folder: Path) -> tuple[int, str]:
    """``ct-triage analyze`` of a spooled series folder (the bridge's own analysis path)."""
    work = Path(tempfile.mkdtemp(prefix="ct-triage-listener-"))
    try:
        with analyze_env():
            return run_analyze(folder, work / "out")
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The small analysable phantom (16 slices, inferior first)."""
    return write_small_phantom(tmp_path_factory.mktemp("listener") / "dicom", n_slices=N_SLICES)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", quiet_period_s=0.2)
    yield s
    s.close()


@pytest.fixture
def scp(spool: Spool) -> Iterator[StorageSCP]:
    with StorageSCP(spool, host="127.0.0.1", port=0) as server:
        yield server


# --- item 6: instances the listener can never use ---------------------------------------------
def _no_pixel_data(ds: Dataset) -> None:
    del ds.PixelData


def _short_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _rows_65535(ds: Dataset) -> None:
    ds.Rows = 65535


def _nan_position(ds: Dataset) -> None:
    ds.ImagePositionPatient = ["NaN", "0", "0"]


def _no_orientation(ds: Dataset) -> None:
    del ds.ImageOrientationPatient


def _zero_spacing(ds: Dataset) -> None:
    ds.PixelSpacing = [0, 0]


BAD = {
    "no-pixel-data": _no_pixel_data,
    "short-pixels": _short_pixels,
    "rows-65535": _rows_65535,
    "nan-position": _nan_position,
    "no-orientation": _no_orientation,
    "zero-spacing": _zero_spacing,
}


@pytest.mark.parametrize("spoil", list(BAD))
def test_unusable_instance_is_refused_and_a_good_copy_replaces_it(
    scp: StorageSCP,
    spool: Spool,
    phantom: list[Path],
    spoil: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = [_read(p) for p in phantom]
    bad = _read(phantom[-1])  # the top slice: the others still form a regular stack
    BAD[spoil](bad)
    sop = str(bad.SOPInstanceUID)
    study, series = str(bad.StudyInstanceUID), str(bad.SeriesInstanceUID)
    folder = spool.series_folder(study, series)

    with caplog.at_level(logging.WARNING, logger="ct_triage.dicom_bridge.scp"):
        answers = _send(scp.port, [*good[:-1], bad])
    assert answers[:-1] == [Answer(STATUS_SUCCESS, "")] * (N_SLICES - 1)
    refused = answers[-1]
    assert refused is not None
    assert refused.status in REFUSED, f"0x{refused.status:04X}"
    assert refused.comment  # the sender learns why
    assert f"C-STORE {sop} from HOSTILE_SCU refused" in caplog.text
    assert sop not in spool.instance_uids(series)
    assert not (folder / f"{sop}.dcm").exists()

    rc, err = _analyse(folder)  # analysable from its good instances
    assert rc == 0, err

    # A later good copy of the same SOP Instance UID is stored, and a bad copy sent after it
    # does not replace it.
    assert _send(scp.port, [good[-1]]) == [Answer(STATUS_SUCCESS, "")]
    assert sop in spool.instance_uids(series)
    stored = (folder / f"{sop}.dcm").read_bytes()
    again = _send(scp.port, [bad])[0]
    assert again is not None
    assert again.status in REFUSED
    assert (folder / f"{sop}.dcm").read_bytes() == stored
    rc, err = _analyse(folder)
    assert rc == 0, err
    assert len(spool.instance_uids(series)) == N_SLICES


def test_usable_instances_are_still_acknowledged(
    scp: StorageSCP, spool: Spool, phantom: list[Path]
) -> None:
    """The check refuses nothing that loads: odd but usable values pass."""
    items = [_read(p) for p in phantom]
    items[0].SliceThickness = "NaN"  # loading ignores an invalid SliceThickness
    items[1].RescaleSlope = 2  # unusual but valid
    answers = _send(scp.port, items)
    assert answers == [Answer(STATUS_SUCCESS, "")] * N_SLICES
    ds = items[0]
    rc, err = _analyse(spool.series_folder(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))
    assert rc == 0, err
