"""Query/retrieve against a real Orthanc: C-FIND, C-MOVE, C-GET, QIDO-RS, WADO-RS.

Also a scripted misbehaving PACS (in the spirit of pynetdicom's ``tests/parrot.py``) that
answers C-GET with one instance and then aborts, and one that rejects the association.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_factory import SeriesSpec, write_series
from orthanc import OrthancServer, free_port, orthanc_available
from pydicom.uid import CTImageStorage
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)
from pynetdicom.transport import ThreadedAssociationServer

from ct_triage.dicom_bridge.dicomweb import (
    BasicAuth,
    DicomWebClient,
    DicomWebError,
    DicomWebNode,
)
from ct_triage.dicom_bridge.dimse import PacsNode
from ct_triage.dicom_bridge.instance_files import write_instance_bytes
from ct_triage.dicom_bridge.pacs_errors import AssociationRejected, PacsUnreachable, RetrieveFailed
from ct_triage.dicom_bridge.query import DimseClient

pytestmark = pytest.mark.integration

ACCESSION = "ACC-QR-0001"
STUDY_DATE = "20240305"
N_SLICES = 5


@dataclass
class Pacs:
    orthanc: OrthancServer
    node: PacsNode
    files: list[Path]
    study_uid: str
    series_uid: str
    scp_dir: Path


def _storage_scp(
    folder: Path, ae_title: str = "CT_TRIAGE"
) -> tuple[ThreadedAssociationServer, int]:
    """A minimal storage SCP writing every instance under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: Any) -> int:
        write_instance_bytes(
            folder, str(event.request.AffectedSOPInstanceUID), event.encoded_dataset()
        )
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    return server, port


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    scp_dir = tmp_path / "scp"
    server, scp_port = _storage_scp(scp_dir)
    orthanc = OrthancServer(
        root=tmp_path / "orthanc", modalities={"triage": ("CT_TRIAGE", "127.0.0.1", scp_port)}
    )
    orthanc.start()
    try:
        spec = SeriesSpec(
            n_slices=N_SLICES,
            extra=(("AccessionNumber", ACCESSION), ("StudyDate", STUDY_DATE)),
        )
        files = write_series(tmp_path / "series", spec)
        orthanc.upload(files)
        ds = pydicom.dcmread(files[0])
        yield Pacs(
            orthanc=orthanc,
            node=PacsNode("ORTHANC", "127.0.0.1", orthanc.dicom_port),
            files=files,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            scp_dir=scp_dir,
        )
    finally:
        orthanc.stop()
        server.shutdown()


def _sop_uids(paths: list[Path] | tuple[Path, ...]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_find_studies_by_uid_accession_date_and_modality(pacs: Pacs) -> None:
    client = DimseClient()
    by_uid = client.find_studies(pacs.node, study_uid=pacs.study_uid)
    assert [m.study_instance_uid for m in by_uid] == [pacs.study_uid]
    assert by_uid[0].accession_number == ACCESSION
    assert by_uid[0].number_of_instances == N_SLICES
    assert "CT" in by_uid[0].modalities_in_study

    by_acc = client.find_studies(pacs.node, accession=ACCESSION)
    assert [m.study_instance_uid for m in by_acc] == [pacs.study_uid]

    in_range = client.find_studies(
        pacs.node, date_range=(date(2024, 3, 1), date(2024, 3, 31)), modality="CT"
    )
    assert [m.study_instance_uid for m in in_range] == [pacs.study_uid]
    assert client.find_studies(pacs.node, date_range=(date(2023, 1, 1), date(2023, 1, 2))) == []
    assert client.find_studies(pacs.node, accession=ACCESSION, modality="MR") == []


def test_find_series(pacs: Pacs) -> None:
    series = DimseClient().find_series(pacs.node, pacs.study_uid)
    assert len(series) == 1
    s = series[0]
    assert (s.series_instance_uid, s.modality, s.series_number) == (pacs.series_uid, "CT", 2)
    assert s.number_of_instances == N_SLICES
    assert s.series_description == "Chest"


def test_move_series_to_our_storage_scp(pacs: Pacs) -> None:
    result = DimseClient().move_series(pacs.node, pacs.study_uid, pacs.series_uid, "CT_TRIAGE")
    assert result.ok
    assert (result.completed, result.failed) == (N_SLICES, 0)
    assert _sop_uids(sorted(pacs.scp_dir.glob("*.dcm"))) == _sop_uids(pacs.files)


def test_move_to_unknown_destination_fails_clearly(pacs: Pacs) -> None:
    with pytest.raises(RetrieveFailed, match="C-MOVE of series") as info:
        DimseClient().move_series(pacs.node, pacs.study_uid, pacs.series_uid, "NOBODY")
    assert info.value.result.completed == 0


def test_get_series_into_folder(pacs: Pacs, tmp_path: Path) -> None:
    dest = tmp_path / "got"
    result = DimseClient().get_series(pacs.node, pacs.study_uid, pacs.series_uid, dest)
    assert result.ok
    assert result.completed == N_SLICES
    assert len(result.files) == N_SLICES
    assert _sop_uids(result.files) == _sop_uids(pacs.files)
    assert not list(dest.glob(".incoming-*"))


def test_wrong_port_is_a_clear_error(pacs: Pacs) -> None:
    node = PacsNode("ORTHANC", "127.0.0.1", free_port())
    with pytest.raises(PacsUnreachable, match=r"ORTHANC@127\.0\.0\.1:\d+.*connection refused"):
        DimseClient(connect_timeout_s=2).find_studies(node, study_uid=pacs.study_uid)


def test_rejected_association_names_the_node_and_reason(tmp_path: Path) -> None:
    ae = AE(ae_title="STRICT")
    ae.require_called_aet = True
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        with pytest.raises(AssociationRejected, match="Called AE title not recognised") as info:
            DimseClient().find_studies(PacsNode("WRONG", "127.0.0.1", port), accession="X")
        assert f"WRONG@127.0.0.1:{port}" in str(info.value)
        assert not info.value.transient
    finally:
        server.shutdown()


def test_pacs_aborting_mid_get_reports_partial_failure(tmp_path: Path) -> None:
    """A misbehaving PACS sends one of three instances, then A-ABORTs."""
    files = write_series(tmp_path / "src", SeriesSpec(n_slices=3))
    first = pydicom.dcmread(files[0])
    done = threading.Event()

    def on_get(event: Any) -> Iterator[Any]:
        yield 3
        yield 0xFF00, first
        event.assoc.abort()
        done.set()

    ae = AE(ae_title="BADPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)]
    )
    assert server is not None
    dest = tmp_path / "partial"
    try:
        with pytest.raises(RetrieveFailed, match="stopped part way") as info:
            DimseClient(dimse_timeout_s=10).get_series(
                PacsNode("BADPACS", "127.0.0.1", port),
                str(first.StudyInstanceUID),
                str(first.SeriesInstanceUID),
                dest,
            )
    finally:
        server.shutdown()
    assert done.is_set()
    result = info.value.result
    assert info.value.transient
    assert result.status is None
    assert len(result.files) == 1
    assert _sop_uids(result.files) == {str(first.SOPInstanceUID)}
    assert "1 file(s) received and kept" in str(info.value)


def _web(orthanc: OrthancServer, password: str | None = None) -> DicomWebNode:
    user, real = orthanc.auth
    return DicomWebNode(orthanc.dicomweb_url, auth=BasicAuth(user, password or real))


def test_qido_search_and_wado_retrieve(pacs: Pacs, tmp_path: Path) -> None:
    with DicomWebClient(_web(pacs.orthanc)) as client:
        studies = client.search_studies(accession=ACCESSION)
        assert [s.study_instance_uid for s in studies] == [pacs.study_uid]
        assert studies[0].number_of_instances == N_SLICES
        ranged = client.search_studies(date_range=(date(2024, 3, 5), date(2024, 3, 5)))
        assert [s.study_instance_uid for s in ranged] == [pacs.study_uid]
        series = client.search_series(pacs.study_uid)
        assert [s.series_instance_uid for s in series] == [pacs.series_uid]
        assert series[0].modality == "CT"
        got = client.retrieve_series(pacs.study_uid, pacs.series_uid, tmp_path / "wado")
    assert _sop_uids(got) == _sop_uids(pacs.files)
    assert pydicom.dcmread(got[0]).pixel_array.shape == (16, 16)


def test_dicomweb_wrong_password_is_clear_and_secret(orthanc: OrthancServer) -> None:
    secret = "definitely-wrong-pw"
    node = _web(orthanc, password=secret)
    assert secret not in repr(node)
    with DicomWebClient(node) as client, pytest.raises(DicomWebError) as info:
        client.search_studies()
    message = str(info.value)
    assert (
        message == f"DICOMweb server at {orthanc.dicomweb_url} refused the credentials (HTTP 401)"
    )
    assert secret not in message
    assert not info.value.transient
