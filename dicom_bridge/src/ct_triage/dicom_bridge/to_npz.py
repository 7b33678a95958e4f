"""Write one DICOM series as an ``.npz`` volume (the format of ``../shared/data/README.md``).

``python -m ct_triage.dicom_bridge.to_npz DICOM_DIR OUT.npz`` chooses the series as
``analyze`` does (default selection rules), loads it and writes ``image`` (int16 HU,
``(z, y, x)``, z inferior to superior), ``spacing`` (mm) and ``source``. Used to make real
lesion-free volumes available to training (``--negatives``), which knows no DICOM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from ct_triage.dicom_bridge import inputs, select
from ct_triage.dicom_bridge.load import load_series
from ct_triage.models.errors import TriageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ct_triage.dicom_bridge.to_npz")
    parser.add_argument("dicom", type=Path, help="folder of one study's DICOM files")
    parser.add_argument("out", type=Path, help="output .npz")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as work:
            found = inputs.discover(args.dicom, work_dir=Path(work))
            choice = select.select_series(found.headers)
            series = load_series(choice.paths)
    except TriageError as exc:
        print(f"to_npz: {exc}", file=sys.stderr)
        return 2
    volume = series.volume
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        image=np.asarray(volume.hu, dtype=np.int16),
        spacing=np.asarray(volume.spacing, dtype=np.float64),
        source=np.asarray(str(args.dicom)),
    )
    print(f"{args.out}: {volume.shape} at {tuple(round(s, 3) for s in volume.spacing)} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
