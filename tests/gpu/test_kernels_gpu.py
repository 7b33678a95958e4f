"""CUDA kernels equal the NumPy references (skipped with a reason without a CUDA GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from ct_triage.kernels import accelerated as acc
from ct_triage.kernels.preprocess import (
    Box,
    uncrop_argmax_reference,
    window_crop_resize_reference,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not acc.cuda_available(), reason="no CUDA GPU (torch.cuda unavailable)"),
]

BOX = Box(y0=-20.0, x0=30.5, height=470.0, width=470.0)


def test_window_crop_resize_cuda_matches_reference() -> None:
    hu = np.random.default_rng(0).integers(-1200, 400, size=(16, 512, 512)).astype(np.int16)
    ref = window_crop_resize_reference(hu, BOX, 224, -1024.0, 150.0)
    got = acc.window_crop_resize_torch(hu, BOX, 224, -1024.0, 150.0, device="cuda")
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_uncrop_argmax_cuda_matches_reference() -> None:
    rng = np.random.default_rng(1)
    e = np.exp(rng.normal(size=(4, 3, 224, 224)).astype(np.float32) * 4)
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    ref, region = uncrop_argmax_reference(probs, BOX, (512, 512))
    got, region2 = acc.uncrop_argmax_torch(probs, BOX, (512, 512), device="cuda")
    assert region == region2
    assert np.mean(got == ref) > 0.999
