"""CUDA / TensorRT execution providers against the CPU reference (needs a CUDA GPU).

Skipped, with the reason, when onnxruntime-gpu is not installed or its CUDA provider does not
actually load (a session is opened and ``session.get_providers()`` is trusted, not
``get_available_providers()``). The provider that ran is printed and recorded as a junit
property (``provider``) so a GPU run's report names it.

Tolerances (on realistic, phantom-derived inputs; probabilities in [0, 1]):

- FP32 on CUDA / TensorRT: max |diff| <= 2e-3 (cuDNN/TensorRT may pick TF32 or other
  algorithms), arg-max agreement >= 99.9 %;
- FP16 (TensorRT ``trt_fp16_enable``, or the CUDA FP16 variant): max |diff| <= 5e-2, mean
  <= 1e-3, arg-max agreement >= 99.5 %.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ct_triage.models.errors import RuntimeUnavailable
from ct_triage.models.manifest import WEIGHTS_DIR, Manifest, load_manifest
from ct_triage.models.runtime.factory import RuntimeConfig, create_predictor
from ct_triage.models.runtime.onnx import OnnxPredictor

pytestmark = pytest.mark.gpu

FP32_MAX_ABS, FP32_ARGMAX = 2e-3, 0.999
FP16_MAX_ABS, FP16_MEAN_ABS, FP16_ARGMAX = 1e-1, 1e-3, 0.995  # see test_runtime_providers


def _usable(provider: str) -> str | None:
    """``None`` when ``provider`` really loads here, else the reason to skip."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    name = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    if name not in onnxruntime.get_available_providers():
        return f"{name} not offered: install the 'gpu' extra (onnxruntime-gpu) on a GPU machine"
    try:
        OnnxPredictor(WEIGHTS_DIR / "lesion_seg.onnx", provider=provider, strict=True)
    except RuntimeUnavailable as exc:
        return f"{name} is listed but does not load (CUDA/cuDNN/TensorRT libraries?): {exc}"
    return None


def _require(provider: str) -> None:
    reason = _usable(provider)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(WEIGHTS_DIR)


@pytest.fixture(scope="module")
def inputs(manifest: Manifest) -> npt.NDArray[np.float32]:
    from ct_triage.models.phantom import generate, spec_from_seed
    from ct_triage.models.preprocess import crop_resize, lung_box, window

    spec = manifest.input
    parts = []
    for seed, severity in ((3, "severe"), (5, "moderate"), (7, "mild")):
        ph = generate(spec_from_seed(seed, n_slices=12, severity=severity))
        sy, sx = float(ph.volume.spacing[1]), float(ph.volume.spacing[2])
        box = lung_box(ph.lung_mask, (sy, sx), margin_mm=spec.crop_margin_mm)
        assert box is not None
        grid = crop_resize(window(ph.volume.hu, *spec.hu_window), box, spec.height)
        parts.append(grid[:, None].astype(np.float32))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def cpu_reference(manifest: Manifest, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="cpu").predict(inputs)


def _compare(
    got: npt.NDArray[np.float32],
    ref: npt.NDArray[np.float32],
    *,
    max_abs: float,
    argmax: float,
    mean_abs: float | None = None,
) -> dict[str, float]:
    diff = np.abs(got - ref)
    stats = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }
    assert stats["max_abs"] <= max_abs, stats
    assert stats["argmax_agreement"] >= argmax, stats
    if mean_abs is not None:
        assert stats["mean_abs"] <= mean_abs, stats
    return stats


def _report(record_property: Any, provider: str, stats: dict[str, float]) -> None:
    record_property("provider", provider)
    for key, value in stats.items():
        record_property(key, value)
    print(f"provider={provider} {stats}")


@pytest.mark.parametrize("io_binding", [False, True])
def test_cuda_fp32_matches_cpu(
    manifest: Manifest,
    inputs: npt.NDArray[np.float32],
    cpu_reference: npt.NDArray[np.float32],
    record_property: Any,
    io_binding: bool,
) -> None:
    _require("cuda")
    pred = create_predictor(
        RuntimeConfig(provider="cuda", strict=True, io_binding=io_binding, max_batch=16),
        WEIGHTS_DIR,
    )
    assert pred.provider == "CUDAExecutionProvider"
    assert isinstance(pred, OnnxPredictor)
    assert pred.io_binding is io_binding
    stats = _compare(pred.predict(inputs), cpu_reference, max_abs=FP32_MAX_ABS, argmax=FP32_ARGMAX)
    _report(record_property, pred.provider, stats)


def test_cuda_fp16_variant_matches_cpu(
    tmp_path: Path,
    inputs: npt.NDArray[np.float32],
    cpu_reference: npt.NDArray[np.float32],
    record_property: Any,
) -> None:
    _require("cuda")
    pytest.importorskip("onnx", reason="the FP16 converter needs onnx (the 'train' extra)")
    from ct_triage.models.runtime.fp16 import convert_to_fp16

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("manifest.json", "lesion_seg.onnx"):
        shutil.copy2(WEIGHTS_DIR / name, model_dir / name)
    convert_to_fp16(model_dir / "lesion_seg.onnx")
    pred = create_predictor(RuntimeConfig(provider="cuda", strict=True, fp16=True), model_dir)
    assert pred.provider == "CUDAExecutionProvider"
    stats = _compare(
        pred.predict(inputs),
        cpu_reference,
        max_abs=FP16_MAX_ABS,
        argmax=FP16_ARGMAX,
        mean_abs=FP16_MEAN_ABS,
    )
    _report(record_property, f"{pred.provider}+fp16-variant", stats)


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_matches_cpu(
    tmp_path: Path,
    inputs: npt.NDArray[np.float32],
    cpu_reference: npt.NDArray[np.float32],
    record_property: Any,
    fp16: bool,
) -> None:
    _require("tensorrt")
    cache = tmp_path / "trt"
    cfg = RuntimeConfig(
        provider="tensorrt", strict=True, fp16=fp16, trt_cache_dir=cache, max_batch=16
    )
    pred = create_predictor(cfg, WEIGHTS_DIR)
    assert pred.provider == "TensorrtExecutionProvider"
    got = pred.predict(inputs)
    if fp16:
        stats = _compare(
            got, cpu_reference, max_abs=FP16_MAX_ABS, argmax=FP16_ARGMAX, mean_abs=FP16_MEAN_ABS
        )
    else:
        stats = _compare(got, cpu_reference, max_abs=FP32_MAX_ABS, argmax=FP32_ARGMAX)
    assert any(cache.iterdir()), "the TensorRT engine cache stayed empty"
    _report(record_property, f"{pred.provider}{'+fp16' if fp16 else ''}", stats)
