"""ONNX Runtime predictor, model manifest and export parity of the shipped lesion model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from ct_triage.models.errors import ModelError, RuntimeUnavailable
from ct_triage.models.lesions import load_lesion_segmenter
from ct_triage.models.manifest import WEIGHTS_DIR, Manifest, load_manifest, verify_file
from ct_triage.models.runtime.base import Predictor
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.models.runtime.onnx import OnnxPredictor


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(WEIGHTS_DIR)


@pytest.fixture(scope="module")
def predictor(manifest: Manifest) -> OnnxPredictor:
    return OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="cpu", threads=2)


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped model directory (ONNX file and manifest only)."""
    dst = tmp_path / "model"
    dst.mkdir()
    for name in ("manifest.json", "lesion_seg.onnx"):
        shutil.copy2(WEIGHTS_DIR / name, dst / name)
    return dst


def test_shipped_manifest_is_valid(manifest: Manifest) -> None:
    assert verify_file(manifest, WEIGHTS_DIR).is_file()
    assert manifest.labels == {0: "background", 1: "ground-glass opacity", 2: "consolidation"}
    assert manifest.training.validation_split
    assert "non-commercial" in manifest.training.licence
    assert {"lesion_dice", "ggo_dice", "consolidation_dice"} <= set(manifest.metrics)
    assert (WEIGHTS_DIR / manifest.file).stat().st_size < 25 * 1024 * 1024


def test_predict_shape_and_probabilities(predictor: OnnxPredictor, manifest: Manifest) -> None:
    spec = manifest.input
    x = np.random.default_rng(0).random((3, spec.channels, spec.height, spec.width), np.float32)
    probs = predictor.predict(x)
    assert isinstance(predictor, Predictor)
    assert probs.shape == (3, manifest.num_classes, spec.height, spec.width)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert predictor.provider == "CPUExecutionProvider"


def test_predict_in_chunks_matches_one_call(manifest: Manifest) -> None:
    spec = manifest.input
    x = np.random.default_rng(1).random((5, spec.channels, spec.height, spec.width), np.float32)
    whole = OnnxPredictor(WEIGHTS_DIR / manifest.file).predict(x)
    chunked = OnnxPredictor(WEIGHTS_DIR / manifest.file, max_batch=2).predict(x)
    np.testing.assert_allclose(whole, chunked, atol=1e-5)


def test_cuda_falls_back_to_cpu_with_warning(
    manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here: the CPU fallback is not exercised")
    with caplog.at_level(logging.WARNING, logger="ct_triage.models.runtime.onnx"):
        pred = OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="cuda")
    assert pred.provider == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider" in r.getMessage() for r in caplog.records)


def test_strict_mode_refuses_fallback(manifest: Manifest) -> None:
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("TensorRT listed as available here")
    with pytest.raises(RuntimeUnavailable, match="TensorrtExecutionProvider"):
        OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="tensorrt", strict=True)


def test_unknown_provider_is_refused(manifest: Manifest) -> None:
    with pytest.raises(RuntimeUnavailable, match=r"unknown execution provider 'rocm'.*cpu"):
        OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="rocm")


def test_segmenter_identity_reports_provider_and_checksum(manifest: Manifest) -> None:
    seg = load_lesion_segmenter(RuntimeConfig(z_step_mm=0.0))
    assert seg.identity.provider == "CPUExecutionProvider"
    assert seg.identity.sha256 == manifest.sha256
    assert seg.identity.name == manifest.name
    assert seg.identity.version == manifest.version


def test_tampered_model_file_is_refused(model_copy: Path) -> None:
    path = model_copy / "lesion_seg.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"does not match its manifest \(sha256"):
        load_lesion_segmenter(RuntimeConfig(model_dir=model_copy))


def test_missing_model_file(model_copy: Path) -> None:
    (model_copy / "lesion_seg.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_lesion_segmenter(RuntimeConfig(model_dir=model_copy))


def test_missing_manifest(model_copy: Path) -> None:
    (model_copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest .* is missing"):
        load_manifest(model_copy)


def test_manifest_not_json(model_copy: Path) -> None:
    (model_copy / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_manifest(model_copy)


def _edit_manifest(model_dir: Path, edit: dict[str, object], drop: str | None = None) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(edit)
    if drop is not None:
        del data[drop]
    path.write_text(json.dumps(data), encoding="utf-8")


def test_manifest_missing_field(model_copy: Path) -> None:
    _edit_manifest(model_copy, {}, drop="sha256")
    with pytest.raises(ModelError, match=r"invalid: sha256: Field required"):
        load_manifest(model_copy)


def test_manifest_unknown_field(model_copy: Path) -> None:
    _edit_manifest(model_copy, {"eval": "__import__('os')"})
    with pytest.raises(ModelError, match="eval: Extra inputs are not permitted"):
        load_manifest(model_copy)


def test_manifest_input_size_mismatch(model_copy: Path, manifest: Manifest) -> None:
    spec = manifest.input.model_dump()
    spec["height"] = spec["width"] = manifest.input.height + 32
    _edit_manifest(model_copy, {"input": spec})
    with pytest.raises(ModelError, match="takes input"):
        load_lesion_segmenter(RuntimeConfig(model_dir=model_copy))


def test_manifest_bad_window(model_copy: Path, manifest: Manifest) -> None:
    spec = manifest.input.model_dump()
    spec["hu_window"] = [100.0, -100.0]
    _edit_manifest(model_copy, {"input": spec})
    with pytest.raises(ModelError, match="hu_window"):
        load_manifest(model_copy)


@pytest.mark.slow
def test_onnx_export_parity_with_torch(tmp_path: Path, manifest: Manifest) -> None:
    """A fresh network exported like the shipped one: |ORT - torch| <= 1e-4 on random input."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("monai")
    from ct_triage.models.nets import LesionNetConfig, build_lesion_net
    from ct_triage.models.train.export import PARITY_TOLERANCE, export_onnx, parity_max_abs_diff

    torch.manual_seed(0)
    net = build_lesion_net(LesionNetConfig()).eval()
    path = export_onnx(net, manifest.input, tmp_path / "m.onnx")
    assert parity_max_abs_diff(net, path, manifest.input, batch=2) <= PARITY_TOLERANCE
