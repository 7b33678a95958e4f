"""The Orthanc test PACS itself: it starts, needs its password, serves DICOMweb."""

from __future__ import annotations

from pathlib import Path

import httpx
from dicom_factory import SeriesSpec, write_series
from orthanc import OrthancServer


def test_orthanc_starts_requires_auth_and_serves_dicomweb(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    assert httpx.get(f"{orthanc.url}/system", timeout=5).status_code == 401
    files = write_series(tmp_path / "s", SeriesSpec(n_slices=3))
    orthanc.upload(files)
    assert len(orthanc.instances()) == 3
    r = httpx.get(f"{orthanc.dicomweb_url}/studies", auth=orthanc.auth, timeout=10)
    assert r.status_code == 200
    assert len(r.json()) == 1
