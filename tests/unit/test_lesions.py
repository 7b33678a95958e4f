"""The lesion segmenter on real MedSeg slices and on a lesion-free synthetic volume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ct_triage.models.errors import InferenceError
from ct_triage.models.lesions import LesionSegmenter, load_lesion_segmenter
from ct_triage.models.manifest import WEIGHTS_DIR
from ct_triage.models.metrics import dice
from ct_triage.models.preprocess import CropBox, crop_resize, interp_matrix, uncrop_resize
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.models.volume import Volume

#: Mean lesion Dice of the shipped model over the 10 validation slices is in the manifest;
#: single slices vary, so the floor for the one slice scored here is its measured Dice minus
#: a margin (see the report of the shipped model).
SLICE_NAME = "medseg_infnet_train_042.npz"
SLICE_DICE_FLOOR = 0.77  # measured 0.890 with lesion_seg.onnx 0.4.0 (0.886 with 0.3.0)
#: Mean lesion Dice over the 10 validation slices recorded in the shipped manifest.
MANIFEST_DICE_FLOOR = 0.74  # measured 0.799 with lesion_seg.onnx 0.4.0 (0.793 with 0.3.0)
#: Percent-involvement error on phantom seed 13 (60 slices, moderate): truth 33.18 %.
PHANTOM_POI_TOLERANCE_PP = 2.5  # measured 0.69 pp (33.87 %) with 0.4.0 (0.67 with 0.3.0)


@pytest.fixture(scope="module")
def segmenter() -> LesionSegmenter:
    return load_lesion_segmenter(RuntimeConfig(threads=2, z_step_mm=0.0))


def _healthy_volume(seed: int = 0) -> tuple[Volume, npt.NDArray[np.uint8]]:
    """A lesion-free synthetic chest: soft-tissue body, two -860 HU lungs with vessels, noise."""
    rng = np.random.default_rng(seed)
    z, n = 12, 256
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    body = ((yy - 128) / 95) ** 2 + ((xx - 128) / 120) ** 2 < 1
    right = ((yy - 125) / 70) ** 2 + ((xx - 80) / 38) ** 2 < 1
    left = ((yy - 125) / 70) ** 2 + ((xx - 176) / 38) ** 2 < 1
    hu = np.full((z, n, n), -1000.0, np.float32)
    hu[:, body] = 40.0
    hu[:, right | left] = -860.0
    for _ in range(60):  # vessels: small bright dots in the lungs
        cy, cx = rng.integers(60, 190), rng.integers(45, 210)
        if right[cy, cx] or left[cy, cx]:
            hu[:, max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = 30.0
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    lungs = np.zeros((z, n, n), np.uint8)
    lungs[:, right] = 1
    lungs[:, left] = 2
    vol = Volume(hu=np.clip(hu, -1024, 3000).astype(np.int16), spacing=(2.0, 1.2, 1.2))
    return vol, lungs


def test_interp_matrix_rows_sum_to_one_inside() -> None:
    m = interp_matrix(100, 300, offset=0.0, scale=3.0)
    np.testing.assert_allclose(m[5:-5].sum(axis=1), 1.0, atol=1e-5)
    up = interp_matrix(300, 100, offset=0.0, scale=1 / 3, renormalise=True)
    np.testing.assert_allclose(up.sum(axis=1), 1.0, atol=1e-5)


def test_crop_and_uncrop_round_trip() -> None:
    img = np.zeros((1, 64, 80), np.float32)
    img[0, 20:40, 30:50] = 1.0
    box = CropBox(y0=-8.0, x0=0.0, height=80.0, width=80.0)
    grid = crop_resize(img, box, 40)
    back, (ys, xs) = uncrop_resize(grid, box, (64, 80))
    assert (ys, xs) == (slice(0, 64), slice(0, 80))
    assert dice(img[0] > 0.5, back[0] > 0.5) > 0.9


def test_real_medseg_slice(segmenter: LesionSegmenter, shared_data: Path) -> None:
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert SLICE_NAME in manifest["training"]["validation_split"]
    assert manifest["metrics"]["lesion_dice"] > MANIFEST_DICE_FLOOR
    assert manifest["metrics"]["phantom_poi_abs_error_pp"] < 1.5
    with np.load(shared_data / "medseg_covid_slices" / "train" / SLICE_NAME) as d:
        image, truth = d["image"], d["lesion_class"]
    # MedSeg slices are thorax crops without spacing: one slice, lungs = the whole image.
    vol = Volume(hu=image[None].astype(np.int16), spacing=(1.0, 1.0, 1.0))
    lungs = np.ones(vol.shape, np.uint8)
    pred = segmenter(vol, lungs)
    assert pred.shape == vol.shape
    assert pred.dtype == np.uint8
    assert set(np.unique(pred)) <= {0, 1, 2}
    assert dice(truth > 0, pred[0] > 0) > SLICE_DICE_FLOOR


def test_lesion_free_volume(segmenter: LesionSegmenter) -> None:
    vol, lungs = _healthy_volume()
    pred = segmenter(vol, lungs)
    assert pred.shape == vol.shape
    assert (pred > 0).sum() / (lungs > 0).sum() < 0.01


def test_no_lung_means_no_inference(segmenter: LesionSegmenter) -> None:
    vol, lungs = _healthy_volume()
    pred = segmenter(vol, np.zeros_like(lungs))
    assert not pred.any()


def test_only_lung_slices_are_run(segmenter: LesionSegmenter) -> None:
    vol, lungs = _healthy_volume()
    lungs[:4] = 0
    calls: list[int] = []
    inner = segmenter.predictor

    class Counting:
        provider = inner.provider

        def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            calls.append(batch.shape[0])
            return inner.predict(batch)

    counted = LesionSegmenter(Counting(), segmenter.manifest, segmenter.identity)
    counted(vol, lungs)
    assert sum(calls) == vol.shape[0] - 4


def test_mask_shape_mismatch(segmenter: LesionSegmenter) -> None:
    vol, lungs = _healthy_volume()
    with pytest.raises(InferenceError, match="does not match"):
        segmenter(vol, lungs[:-1])


@pytest.mark.slow
def test_phantom_percent_involvement(segmenter: LesionSegmenter) -> None:
    """The ``analyze`` compute path on a held-out phantom (seed 13, as in the e2e test)."""
    from ct_triage.models.analysis import segment
    from ct_triage.models.phantom import generate, percent_involvement, spec_from_seed
    from ct_triage.models.quantify import quantify

    ph = generate(spec_from_seed(13, n_slices=60, severity="moderate"))
    truth = percent_involvement(ph)["total"]
    got = quantify(segment(ph.volume, segmenter)).percent_involvement.total
    assert abs(got - truth) < PHANTOM_POI_TOLERANCE_PP, (truth, got)


def _linear_probs(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A stand-in network: P(GGO) = the windowed intensity, P(background) = 1 - it."""
    x = batch[:, :1]
    return np.concatenate([1.0 - x, x, np.zeros_like(x)], axis=1).astype(np.float32)


@pytest.mark.parametrize(("n_slices", "z_step"), [(11, 2), (12, 2), (13, 3), (2, 5)])
def test_z_step_runs_every_kth_slice_and_interpolates(
    segmenter: LesionSegmenter, n_slices: int, z_step: int
) -> None:
    from ct_triage.models.lesions import segment_slices

    # intensity linear in z: interpolating the stand-in's probabilities is exact, so the
    # labels equal those of running every slice
    z = np.arange(n_slices, dtype=np.float32)
    hu = np.empty((n_slices, 40, 40), dtype=np.int16)
    hu[:] = (-1000.0 + 1100.0 * z / max(n_slices - 1, 1)).astype(np.int16)[:, None, None]
    hu[:, :, :5] = -1024  # some background in every slice
    spec = segmenter.manifest.input
    box = CropBox(y0=0.0, x0=0.0, height=40.0, width=40.0)
    slices = np.arange(n_slices, dtype=np.intp)
    seen: list[float] = []

    def predict(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        seen.extend(float(b[0, 20, 30]) for b in batch)
        return _linear_probs(batch)

    every = segment_slices(hu, slices, box, _linear_probs, spec, batch_size=4)
    stepped = segment_slices(hu, slices, box, predict, spec, batch_size=4, z_step=z_step)
    expected_run = sorted({*range(0, n_slices, z_step), n_slices - 1})
    assert len(seen) == len(expected_run)
    assert np.array_equal(every, stepped)
    assert {0, 1} <= set(np.unique(every))


def test_z_step_for_thin_and_thick_slices() -> None:
    from ct_triage.models.lesions import z_step_for

    assert z_step_for(1.0, 2.0) == 2
    assert z_step_for(0.625, 2.0) == 3
    assert z_step_for(2.5, 2.0) == 1
    assert z_step_for(1.0, 0.0) == 1
    from ct_triage.models.lesions import segment_slices

    spec = load_lesion_segmenter(RuntimeConfig()).manifest.input
    hu, slices = np.zeros((2, 8, 8), np.int16), np.arange(2, dtype=np.intp)
    with pytest.raises(ValueError, match="z_step"):
        segment_slices(hu, slices, CropBox(0.0, 0.0, 8.0, 8.0), _linear_probs, spec, z_step=0)
