"""Every bad input gets exit code 2, one clear line on stderr, and no result folder.

These run the real ``ct-triage analyze`` entry point (``ct_triage.server.cli.main``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from dicom_factory import SeriesSpec, write_series

from ct_triage.server.cli import main

Builder = Callable[[Path], Path]

BASE = SeriesSpec(n_slices=12, rows=32, columns=32)


def _series(spec: SeriesSpec) -> Builder:
    def build(root: Path) -> Path:
        write_series(root / "in", spec)
        return root / "in"

    return build


def _mixed_orientation(root: Path) -> Path:
    write_series(root / "in" / "a", BASE)
    write_series(
        root / "in" / "b",
        replace(BASE, orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), series_number=3),
    )
    return root / "in"


def _truncated_header(root: Path) -> Path:
    paths = write_series(root / "in", BASE)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 3])  # cut inside the header
    return root / "in"


def _truncated_pixels(root: Path) -> Path:
    paths = write_series(root / "in", BASE)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:-100])  # cut inside the pixel data
    return root / "in"


def _garbage_dicom(root: Path) -> Path:
    paths = write_series(root / "in", BASE)
    raw = bytearray(paths[5].read_bytes())
    raw[200:260] = b"\xff" * 60  # corrupt the header after the DICM preamble
    paths[5].write_bytes(bytes(raw))
    return root / "in"


def _empty(root: Path) -> Path:
    (root / "in").mkdir()
    (root / "in" / "notes.txt").write_text("not a DICOM file")
    return root / "in"


def _zip_slip(root: Path) -> Path:
    paths = write_series(root / "series", BASE)
    zpath = root / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in paths:
            zf.write(p, arcname=f"../../escape/{p.name}")
    return zpath


CASES: dict[str, tuple[Builder, str]] = {
    "not_ct": (_series(replace(BASE, modality="MR")), "MR"),
    "localizer": (
        _series(replace(BASE, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))),
        "localizer",
    ),
    "too_few_slices": (_series(replace(BASE, n_slices=3)), "slices"),
    "mixed_orientation": (_mixed_orientation, "series"),
    "irregular_spacing": (
        _series(
            replace(
                BASE,
                positions_along_normal=tuple(
                    float(i) * 1.0 + (0.4 if i == 6 else 0.0) for i in range(12)
                ),
            )
        ),
        "spacing",
    ),
    "missing_slice": (_series(replace(BASE, missing=(6,))), "missing slice"),
    "gantry_tilt": (_series(replace(BASE, tilt_deg=15.0)), "tilt"),
    "no_pixel_data": (_series(replace(BASE, with_pixels=False)), "pixel data"),
    "truncated_header": (_truncated_header, "truncated"),
    "truncated_pixels": (_truncated_pixels, "truncated"),
    "corrupt_header": (_garbage_dicom, ""),
    "empty_folder": (_empty, "No DICOM files"),
    "zip_slip": (_zip_slip, "outside"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exit_2_one_line_nothing_written(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CT_TRIAGE_MIN_SLICES", "4")
    build, phrase = CASES[case]
    source = build(tmp_path)
    out = tmp_path / "out"
    rc = main(["analyze", str(source), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    messages = [line for line in err if line.startswith("ct-triage:")]
    assert rc == 2, err
    assert len(messages) == 1, err
    assert "declined" in messages[0]
    assert phrase.lower() in messages[0].lower()
    assert not out.exists()
    # Nothing staged is left behind beside OUT.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert not (tmp_path / "escape").exists()


def test_abdomen_j2k_series_is_declined_as_no_lungs(
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real JPEG 2000 upper-abdomen series decodes, then is declined: it shows no lung."""
    monkeypatch.setenv("CT_TRIAGE_MIN_SLICES", "10")
    out = tmp_path / "out"
    rc = main(
        ["analyze", str(shared_data / "dicom" / "totalseg_abdomen_20slices_j2k"), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "no lungs visible" in err
    assert not out.exists()


def test_abdomen_j2k_series_declined_for_slices_by_default(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "analyze",
            str(shared_data / "dicom" / "totalseg_abdomen_20slices_j2k"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2
    assert "20 slices" in capsys.readouterr().err


def test_output_folder_with_foreign_files_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    rc = main(["analyze", str(tmp_path / "missing"), "--out", str(out)])
    assert rc == 1
    assert "not empty" in capsys.readouterr().err
    assert (out / "thesis.docx").read_text() == "precious"
