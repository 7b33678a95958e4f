"""A small chest CT series that analyses end to end in about a second, for hostile-input tests.

The series is the project's synthetic phantom (:mod:`ct_triage.models.phantom`) at 16 slices
of 128 x 128 pixels, 10 mm apart, written by :func:`ct_triage.dicom_bridge.synthetic.
write_phantom_series`; :data:`ENV` lowers the selection rules so it qualifies. The shipped
lesion model is loaded once per process (:func:`cached_model`) and :func:`run_analyze` runs
the real ``ct-triage analyze`` entry point in-process, capturing stderr.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.lesions import LesionSegmenter
from ct_triage.models.phantom import PhantomSpec, generate
from ct_triage.server.cli import analyze as analyze_verb
from ct_triage.server.cli import main
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import load_model

__all__ = [
    "ENV",
    "analyze_env",
    "cached_model",
    "run_analyze",
    "write_small_phantom",
]

#: Settings under which the small phantom qualifies (few, thick slices).
ENV: dict[str, str] = {
    "CT_TRIAGE_MIN_SLICES": "3",
    "CT_TRIAGE_MAX_SLICE_THICKNESS_MM": "20",
    "CT_TRIAGE_MALLOC_TUNING": "false",
}


def write_small_phantom(folder: Path, *, seed: int = 3, n_slices: int = 16) -> list[Path]:
    """Write the small phantom series into ``folder``; return its files (sorted)."""
    spec = PhantomSpec(
        seed=seed,
        n_slices=n_slices,
        slice_spacing_mm=10.0,
        pixel_spacing_mm=1.4,
        severity="moderate",
        rows=128,
        cols=128,
    )
    write_phantom_series(generate(spec), folder)
    return sorted(folder.glob("*.dcm"))


@functools.cache
def cached_model() -> LesionSegmenter:
    """The shipped lesion model, loaded once per process."""
    return load_model(Settings())


@contextlib.contextmanager
def analyze_env() -> Iterator[None]:
    """:data:`ENV` set and the ``analyze`` verb's ``load_model`` returning :func:`cached_model`."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        model = cached_model()
        mp.setattr(analyze_verb, "load_model", lambda settings: model)
        yield


def run_analyze(source: Path, out: Path) -> tuple[int, str]:
    """Run ``ct-triage analyze SOURCE --out OUT`` in-process; return (exit code, stderr).

    The ``ct_triage`` logger configured by the CLI is restored afterwards, so later tests
    see the logging set-up they expect.
    """
    log = logging.getLogger("ct_triage")
    saved = (log.handlers[:], log.level, log.propagate)
    err, sink = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
            rc = main(["analyze", str(source), "--out", str(out)])
    finally:
        log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]
    return rc, err.getvalue()
