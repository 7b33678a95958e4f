"""Accelerated kernels equal their NumPy references (exact for integers, 1e-5 for floats)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

from ct_triage.kernels import accelerated as acc
from ct_triage.kernels import components, overlay
from ct_triage.kernels.preprocess import (
    Box,
    uncrop_argmax,
    uncrop_argmax_reference,
    window_crop_resize,
    window_crop_resize_reference,
)

FLOAT_ATOL = 1e-5
BOXES = [
    Box(y0=60.3, x0=40.7, height=380.5, width=380.5),  # inside, downsampling
    Box(y0=-20.0, x0=-35.5, height=560.0, width=560.0),  # overhangs the image
    Box(y0=100.0, x0=120.0, height=150.0, width=150.0),  # upsampling
]


def _hu(n: int = 4, size: int = 512, seed: int = 0) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return rng.integers(-1200, 400, size=(n, size, size)).astype(np.int16)


@pytest.mark.parametrize("box", BOXES)
def test_window_crop_resize_numpy_matches_reference(box: Box) -> None:
    hu = _hu()
    ref = window_crop_resize_reference(hu, box, 224, -1024.0, 150.0)
    got = window_crop_resize(hu, box, 224, -1024.0, 150.0)
    assert got.dtype == np.float32
    assert got.shape == ref.shape == (4, 224, 224)
    np.testing.assert_allclose(got, ref, atol=FLOAT_ATOL, rtol=0)


def test_window_crop_resize_matches_models_preprocess() -> None:
    """The kernel reproduces the models' own window + crop_resize (what the network saw)."""
    preprocess = pytest.importorskip("ct_triage.models.preprocess")
    hu = _hu(2)
    box = BOXES[1]
    mbox = preprocess.CropBox(box.y0, box.x0, box.height, box.width)
    ref = preprocess.crop_resize(preprocess.window(hu, -1024.0, 150.0), mbox, 224)
    np.testing.assert_allclose(window_crop_resize(hu, box, 224, -1024.0, 150.0), ref, atol=1e-5)


@pytest.mark.skipif(not acc.torch_available(), reason="torch is not installed")
@pytest.mark.parametrize("box", BOXES)
def test_window_crop_resize_torch_cpu_matches_reference(box: Box) -> None:
    hu = _hu()
    ref = window_crop_resize_reference(hu, box, 224, -1024.0, 150.0)
    got = acc.window_crop_resize_torch(hu, box, 224, -1024.0, 150.0, device="cpu")
    np.testing.assert_allclose(got, ref, atol=FLOAT_ATOL, rtol=0)


def _probs(n: int = 3, k: int = 3, s: int = 224, seed: int = 1) -> npt.NDArray[np.float32]:
    logits = np.random.default_rng(seed).normal(size=(n, k, s, s)).astype(np.float32)
    logits = ndi.uniform_filter(logits, size=(1, 1, 9, 9))  # smooth, like a network output
    e = np.exp(logits * 8)
    probs: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def _agree_except_ties(
    got: npt.NDArray[np.uint8], ref: npt.NDArray[np.uint8], back: npt.NDArray[np.float32]
) -> None:
    diff = got != ref
    if diff.any():  # only where the two classes are tied within the float tolerance
        top = np.sort(back, axis=1)
        assert np.all((top[:, -1] - top[:, -2])[diff] < 1e-5)


@pytest.mark.parametrize("box", BOXES)
def test_uncrop_argmax_matches_reference(box: Box) -> None:
    probs = _probs()
    ref, region = uncrop_argmax_reference(probs, box, (512, 512))
    got, region2 = uncrop_argmax(probs, box, (512, 512))
    assert region == region2
    assert got.dtype == np.uint8
    assert np.mean(got == ref) > 0.9999


@pytest.mark.parametrize("box", BOXES)
def test_uncrop_argmax_mostly_background_matches_reference(box: Box) -> None:
    # what the network gives: background almost everywhere, a few lesions, empty slices
    rng = np.random.default_rng(9)
    n, size = 4, 64
    logits = rng.normal(0.0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    logits[:, 0] += 3.0
    logits[0, 1, 10:20, 30:45] += 4.0
    logits[0, 2, 15:25, 40:50] += 5.0
    logits[2, 2, 50:60, 0:6] += 5.0  # at the edge of the network grid
    logits[3, 1, 33, 33] += 6.0  # one pixel
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ref, region = uncrop_argmax_reference(probs, box, (512, 512))
    got, region2 = uncrop_argmax(probs, box, (512, 512))
    assert region == region2
    assert (ref[0] > 0).sum() > 100
    assert not ref[1].any()
    assert np.mean(got == ref) > 0.99999
    np.testing.assert_array_equal(got[1], 0)
    assert set(np.unique(got[0])) == {0, 1, 2}


@pytest.mark.skipif(not acc.torch_available(), reason="torch is not installed")
def test_uncrop_argmax_torch_cpu_matches_reference() -> None:
    probs = _probs()
    ref, region = uncrop_argmax_reference(probs, BOXES[0], (512, 512))
    got, region2 = acc.uncrop_argmax_torch(probs, BOXES[0], (512, 512), device="cpu")
    assert region == region2
    assert np.mean(got == ref) > 0.9999


def _blobs(shape: tuple[int, ...], seed: int = 2) -> npt.NDArray[np.bool_]:
    noise = np.random.default_rng(seed).random(shape)
    smooth = ndi.uniform_filter(noise, size=3)
    return np.asarray(smooth > 0.55)


@pytest.mark.parametrize(
    ("connectivity", "structure"),
    [(26, components.FULL_CONNECTIVITY), (6, components.FACE_CONNECTIVITY)],
)
def test_label_fast_equals_scipy(connectivity: int, structure: npt.NDArray[np.bool_]) -> None:
    mask = _blobs((20, 64, 64))
    ref, n_ref = components.label(mask, structure)
    got, n = acc.label_fast(mask, connectivity)
    assert n == n_ref > 5
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("connectivity", "structure"), [(8, np.ones((3, 3), bool)), (4, None)])
def test_label_fast_2d_equals_scipy(connectivity: int, structure: npt.NDArray[np.bool_]) -> None:
    mask = _blobs((175, 219), seed=11)
    ref, n_ref = components.label(mask, structure)
    got, n = acc.label_fast(mask, connectivity)
    assert n == n_ref > 50
    assert int(got.max()) == n
    np.testing.assert_array_equal(got, ref)


def test_label_inplane_fast_equals_scipy() -> None:
    mask = _blobs((12, 64, 64), seed=7)
    mask[3] = False  # an empty slice
    ref, n_ref = components.label(mask, components.INPLANE_CONNECTIVITY)
    got, n = acc.label_inplane_fast(mask)
    assert n == n_ref > 20
    np.testing.assert_array_equal(got, ref)


def test_fill_holes_inplane_fast_equals_reference() -> None:
    mask = ~_blobs((10, 64, 64), seed=8)  # many enclosed background pieces
    mask[:, 20:40, 20:40] = True
    mask[:, 25:35, 25:35] = False  # a hole in every slice
    mask[:, 0, 30:34] = False  # a notch open to the edge: not a hole
    mask[4] = True  # a full slice
    ref = components.fill_holes_inplane(mask)
    got = acc.fill_holes_inplane_fast(mask)
    assert ref[:, 25:35, 25:35].all()
    assert (ref != mask).sum() > 100
    np.testing.assert_array_equal(got, ref)


def test_remove_small_components_fast_equals_reference() -> None:
    mask = _blobs((20, 64, 64), seed=3)
    ref = components.remove_small_components(mask, 30, components.FULL_CONNECTIVITY)
    got = acc.remove_small_components_fast(mask, 30, 26)
    np.testing.assert_array_equal(got, ref)
    assert acc.remove_small_components_fast(mask, 1).sum() == mask.sum()


def test_render_slices_equals_render_slice() -> None:
    rng = np.random.default_rng(4)
    hu = rng.integers(-1100, 300, size=(3, 48, 40)).astype(np.int16)
    lungs = np.zeros(hu.shape, dtype=np.uint8)
    lungs[:, 5:40, 3:18] = 1
    lungs[:, 5:40, 22:38] = 2
    lesions = np.zeros(hu.shape, dtype=np.uint8)
    lesions[:, 10:20, 5:15] = 1
    lesions[1:, 25:35, 25:35] = 2
    lesions[:, 0:3, 0:40] = 2  # touching the image border
    got = acc.render_slices(hu, lungs, lesions)
    for i in range(hu.shape[0]):
        np.testing.assert_array_equal(got[i], overlay.render_slice(hu[i], lungs[i], lesions[i]))


def _two_lungs(shape: tuple[int, int, int], seed: int) -> npt.NDArray[np.uint8]:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[_blobs(shape, seed=seed)] = 1
    right = _blobs(shape, seed=seed + 1)
    right[:, :, : shape[2] // 2] = False
    labels[right] = 2
    return labels


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.8)])
@pytest.mark.parametrize("max_distance", [3.0, 1e9])
def test_nearest_label_within_fast_equals_reference(
    spacing: tuple[float, ...], max_distance: float
) -> None:
    labels = _two_lungs((16, 48, 56), seed=5)
    query = _blobs(labels.shape, seed=6) | (labels == 0)
    query[0, 0, 0] = True  # a corner
    ref_d, ref_n = components.nearest_label_within(labels, spacing, query, max_distance)
    got_d, got_n = acc.nearest_label_within_fast(labels, spacing, query, max_distance)
    assert got_d.shape == ref_d.shape == (int(query.sum()),)
    np.testing.assert_allclose(got_d, ref_d, rtol=0, atol=1e-9)
    # the nearest label may differ only where both labels are equally near
    d1 = ndi.distance_transform_edt(labels != 1, sampling=spacing)[query]
    d2 = ndi.distance_transform_edt(labels != 2, sampling=spacing)[query]
    tie = np.abs(d1 - d2) <= 1e-9
    assert (got_n != ref_n)[~tie].sum() == 0
    assert set(np.unique(got_n)) == ({0, 1, 2} if max_distance < 10 else {1, 2})
    inside = labels[query] > 0
    assert (got_d[inside] == 0).all()
    np.testing.assert_array_equal(got_n[inside], labels[query][inside])
    assert np.isinf(got_d[got_n == 0]).all()


def test_nearest_label_within_edge_cases() -> None:
    empty = np.zeros((3, 4, 5), dtype=np.uint8)
    query = np.ones(empty.shape, dtype=bool)
    for fn in (components.nearest_label_within, acc.nearest_label_within_fast):
        dist, nearest = fn(empty, (1.0, 1.0, 1.0), query, 10.0)
        assert np.isinf(dist).all()
        assert not nearest.any()
        dist, nearest = fn(empty, (1.0, 1.0, 1.0), ~query, 10.0)
        assert dist.size == nearest.size == 0
    with pytest.raises(ValueError, match=r"0\.\.255"):
        components.nearest_label_within(np.full((2, 2), 300), (1.0, 1.0), query[0, :2, :2], 1)
    with pytest.raises(ValueError, match="shape"):
        acc.nearest_label_within_fast(empty, (1.0, 1.0, 1.0), query[0], 1.0)


def test_backends_report_availability() -> None:
    assert isinstance(acc.torch_available(), bool)
    assert isinstance(acc.cc3d_available(), bool)
    assert acc.default_device() in {"cpu", "cuda"}


def test_inplane_dilation_and_erosion_fast_equal_scipy() -> None:
    mask = _blobs((9, 48, 40), seed=5)
    mask[2] = False  # an empty slice
    mask[3] = True  # a full slice: erosion keeps it (outside counts as True)
    mask[5, 0, :] = True  # touching the edges
    mask[5, :, -1] = True
    for fast, ref in (
        (acc.dilate_inplane_fast, components.dilate_inplane),
        (acc.erode_inplane_fast, components.erode_inplane),
    ):
        want = ref(mask)
        assert (want != mask).sum() > 100
        np.testing.assert_array_equal(fast(mask), want)
    assert acc.erode_inplane_fast(mask)[3].all()
    assert not acc.dilate_inplane_fast(mask)[2].any()


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 11, 30])
def test_inplane_dilation_and_erosion_steps_equal_repeated_steps(steps: int) -> None:
    mask = _blobs((6, 37, 29), seed=7)
    mask[1] = False
    mask[2] = True
    mask[4, 0, :] = True  # touching the edges
    mask[4, :, -1] = True
    thin = _blobs((3, 1, 9), seed=8)  # thinner than the steps
    for m in (mask, thin):
        for fast, ref in (
            (acc.dilate_inplane_fast, components.dilate_inplane),
            (acc.erode_inplane_fast, components.erode_inplane),
        ):
            want = m
            for _ in range(steps):
                want = ref(want)
            got = fast(m, steps)
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)
