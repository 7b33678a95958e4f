"""ONNX Runtime provider options and fallback, the runtime factory, and the FP16 variant (CPU).

GPU behaviour proper (CUDA / TensorRT parity) is in ``tests/gpu/test_gpu_providers.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from ct_triage.models.errors import ModelError, RuntimeUnavailable
from ct_triage.models.manifest import WEIGHTS_DIR, Manifest, load_manifest
from ct_triage.models.runtime import onnx as ort_runtime
from ct_triage.models.runtime.factory import RuntimeConfig, check_runtime, create_predictor
from ct_triage.models.runtime.onnx import CudaOptions, OnnxPredictor, TensorrtOptions

#: FP16 vs FP32 on realistic inputs. Rounding the weights to float16 moves single
#: probabilities near class boundaries: by up to 0.025 with model 0.3.0 and 0.065 with 0.4.0
#: (52 of 3.6 M values above 0.05; mean 1.1e-4, arg-max agreement 99.98 %). The mean and the
#: arg-max agreement are the bounds that matter; the maximum only catches a broken conversion.
FP16_MAX_ABS = 1e-1
FP16_MEAN_ABS = 1e-3
FP16_ARGMAX_AGREEMENT = 0.995


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(WEIGHTS_DIR)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    dst.mkdir()
    for name in ("manifest.json", "lesion_seg.onnx"):
        shutil.copy2(WEIGHTS_DIR / name, dst / name)
    return dst


def _gpu_listed() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def realistic_batch(manifest: Manifest) -> npt.NDArray[np.float32]:
    """Windowed, lung-cropped slices of three phantoms (mild, moderate, severe disease)."""
    from ct_triage.models.phantom import generate, spec_from_seed
    from ct_triage.models.preprocess import crop_resize, lung_box, window

    spec = manifest.input
    parts = []
    for seed, severity in ((3, "severe"), (5, "moderate"), (7, "mild")):
        ph = generate(spec_from_seed(seed, n_slices=8, severity=severity))
        sy, sx = float(ph.volume.spacing[1]), float(ph.volume.spacing[2])
        box = lung_box(ph.lung_mask, (sy, sx), margin_mm=spec.crop_margin_mm)
        assert box is not None
        grid = crop_resize(window(ph.volume.hu, *spec.hu_window), box, spec.height)
        parts.append(grid[:, None].astype(np.float32))
    return np.concatenate(parts)


# -- provider options ---------------------------------------------------------------------------


def test_cuda_provider_options() -> None:
    opts = CudaOptions(
        device_id=1, cudnn_conv_algo_search="HEURISTIC", gpu_mem_limit_bytes=4 << 30
    ).as_provider_options()
    assert opts == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": "1",
        "gpu_mem_limit": str(4 << 30),
    }


def test_tensorrt_provider_options(tmp_path: Path) -> None:
    opts = TensorrtOptions(
        fp16=True,
        engine_cache_dir=tmp_path,
        max_workspace_bytes=1 << 30,
        profile_shapes=("image:1x1x224x224", "image:16x1x224x224", "image:32x1x224x224"),
    ).as_provider_options()
    assert opts["trt_fp16_enable"] == "True"
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_max_workspace_size"] == str(1 << 30)
    assert opts["trt_profile_max_shapes"] == "image:32x1x224x224"
    assert TensorrtOptions().as_provider_options()["trt_engine_cache_enable"] == "False"


def test_session_is_tuned(manifest: Manifest) -> None:
    pred = OnnxPredictor(WEIGHTS_DIR / manifest.file, threads=2, io_binding=True)
    options = pred._session.get_session_options()
    import onnxruntime

    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.enable_mem_pattern
    assert options.intra_op_num_threads == 2
    assert pred.io_binding is False  # IO binding is a GPU-only path


def test_tensorrt_falls_back_and_names_both(
    manifest: Manifest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if _gpu_listed():
        pytest.skip("onnxruntime-gpu is installed here: the CPU fallback is not exercised")
    with caplog.at_level(logging.WARNING, logger="ct_triage.models.runtime.onnx"):
        pred = OnnxPredictor(
            WEIGHTS_DIR / manifest.file,
            provider="tensorrt",
            tensorrt=TensorrtOptions(engine_cache_dir=tmp_path / "trt"),
        )
    assert pred.provider == "CPUExecutionProvider"
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "TensorrtExecutionProvider" in record.getMessage()
    assert "CPUExecutionProvider" in record.getMessage()
    assert (tmp_path / "trt").is_dir()


def test_strict_cuda_names_the_gpu_extra(manifest: Manifest) -> None:
    if _gpu_listed():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(RuntimeUnavailable, match=r"CUDAExecutionProvider.*ct-triage-models\[gpu\]"):
        OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="cuda", strict=True)


def test_unwritable_trt_cache_is_refused(manifest: Manifest, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(RuntimeUnavailable, match="engine cache directory"):
        OnnxPredictor(
            WEIGHTS_DIR / manifest.file,
            provider="tensorrt",
            tensorrt=TensorrtOptions(engine_cache_dir=blocker / "cache"),
        )


def test_availability_reports() -> None:
    assert ort_runtime.is_available("cpu")
    assert "unknown execution provider" in (ort_runtime.unavailable_reason("rocm") or "")
    if not _gpu_listed():
        assert "ct-triage-models[gpu]" in (ort_runtime.unavailable_reason("cuda") or "")


# -- RuntimeConfig and the factory ----------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="triton_url"):
        RuntimeConfig(kind="triton")
    with pytest.raises(ValidationError, match="mutual TLS"):
        RuntimeConfig(kind="triton", triton_url="h:1", triton_ssl_cert=Path("c.pem"))
    with pytest.raises(ValidationError):
        RuntimeConfig.model_validate({"provider": "rocm"})
    with pytest.raises(ValidationError):
        RuntimeConfig(threads=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        RuntimeConfig.model_validate({"provider": "cpu", "eval": "x"})
    cfg = RuntimeConfig.model_validate_json(json.dumps({"provider": "cuda", "fp16": True}))
    assert cfg.provider == "cuda"
    assert cfg.fp16
    assert cfg.kind == "onnxruntime"


def test_factory_cpu(manifest: Manifest) -> None:
    pred = create_predictor(RuntimeConfig(threads=2, max_batch=4), WEIGHTS_DIR)
    assert isinstance(pred, OnnxPredictor)
    assert pred.provider == "CPUExecutionProvider"
    x = np.zeros((1, 1, manifest.input.height, manifest.input.width), np.float32)
    assert pred.predict(x).shape == (1, manifest.num_classes, 224, 224)


def test_factory_refuses_manifest_mismatch(model_dir: Path) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["labels"]["3"] = "extra class"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelError, match=r"produces .* manifest says \(N, \*\(4, 224, 224\)\)"):
        create_predictor(RuntimeConfig(), model_dir)


def test_check_runtime_names_missing_triton_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name.startswith("tritonclient") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    cfg = RuntimeConfig(kind="triton", triton_url="localhost:8001", triton_protocol="grpc")
    with pytest.raises(
        RuntimeUnavailable,
        match=r"needs the 'triton' extra: pip install 'ct-triage-models\[triton\]'",
    ):
        check_runtime(cfg)


def test_check_runtime_gpu(caplog: pytest.LogCaptureFixture) -> None:
    if _gpu_listed():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(RuntimeUnavailable, match=r"ct-triage-models\[gpu\]"):
        check_runtime(RuntimeConfig(provider="cuda", strict=True))
    with caplog.at_level(logging.WARNING, logger="ct_triage.models.runtime.factory"):
        check_runtime(RuntimeConfig(provider="tensorrt"))
    assert any("fall back" in r.getMessage() for r in caplog.records)
    check_runtime(RuntimeConfig())


def test_factory_triton_unreachable(manifest: Manifest) -> None:
    from ct_triage.models.runtime.triton import is_available

    if not is_available("http"):
        pytest.skip("tritonclient[http] is not installed (the 'triton' extra)")
    from ct_triage.models.errors import InferenceError

    cfg = RuntimeConfig(
        kind="triton", triton_url="127.0.0.1:9", triton_timeout_s=2, triton_retry_backoff_s=0.01
    )
    # a site starts while its pool is down (it keeps receiving); a study then fails, naming it
    predictor = create_predictor(cfg, WEIGHTS_DIR)
    with pytest.raises(InferenceError, match=r"Triton pool unavailable.*127\.0\.0\.1:9"):
        predictor.predict(np.zeros((1, 1, 224, 224), np.float32))


# -- FP16 variant -------------------------------------------------------------------------------


@pytest.fixture
def fp16_dir(model_dir: Path) -> Path:
    pytest.importorskip("onnx", reason="the FP16 converter needs onnx (the 'train' extra)")
    from ct_triage.models.runtime.fp16 import convert_to_fp16

    convert_to_fp16(model_dir / "lesion_seg.onnx")
    return model_dir


def test_fp16_variant_is_valid(fp16_dir: Path, manifest: Manifest) -> None:
    import onnx

    from ct_triage.models.runtime.fp16 import verify_fp16_variant

    path = verify_fp16_variant(manifest, fp16_dir)
    assert path.name == "lesion_seg.fp16.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    io = [*model.graph.input, *model.graph.output]
    assert [t.type.tensor_type.elem_type for t in io] == [onnx.TensorProto.FLOAT] * 2
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert weights
    assert not [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]


def test_fp16_matches_fp32_on_realistic_input(fp16_dir: Path, manifest: Manifest) -> None:
    """CPU ORT may upcast FP16 kernels; this bounds the error of the FP16 weights and casts."""
    x = realistic_batch(manifest)
    fp32 = OnnxPredictor(fp16_dir / "lesion_seg.onnx", threads=2).predict(x)
    try:
        half = OnnxPredictor(fp16_dir / "lesion_seg.fp16.onnx", threads=2)
    except ModelError as exc:  # pragma: no cover - depends on the ORT build
        pytest.skip(f"this CPU ONNX Runtime cannot run the FP16 model: {exc}")
    got = half.predict(x)
    assert got.dtype == np.float32
    diff = np.abs(got - fp32)
    assert float(diff.max()) <= FP16_MAX_ABS
    assert float(diff.mean()) <= FP16_MEAN_ABS
    assert float((got.argmax(1) == fp32.argmax(1)).mean()) >= FP16_ARGMAX_AGREEMENT


def test_fp16_variant_tampered_or_stale(fp16_dir: Path, manifest: Manifest) -> None:
    from ct_triage.models.runtime.fp16 import convert_to_fp16, verify_fp16_variant

    path = fp16_dir / "lesion_seg.fp16.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its sidecar"):
        verify_fp16_variant(manifest, fp16_dir)
    # A variant made from another FP32 file (here: a copy with different metadata) is stale.
    other = fp16_dir / "other.onnx"
    import onnx

    m = onnx.load(str(fp16_dir / "lesion_seg.onnx"))
    m.doc_string = "another model"
    onnx.save(m, str(other))
    convert_to_fp16(other, path)  # intact (fresh sidecar), but from the wrong source
    with pytest.raises(ModelError, match="converted from another model"):
        verify_fp16_variant(manifest, fp16_dir)


def test_factory_fp16_cuda_needs_variant(model_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"FP16 variant .* is missing .*runtime\.fp16"):
        create_predictor(RuntimeConfig(provider="cuda", fp16=True), model_dir)


def test_fp16_refuses_unsupported_ops(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="the FP16 converter needs onnx")
    from onnx import TensorProto, helper

    from ct_triage.models.runtime.fp16 import convert_to_fp16

    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    src = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph), str(src))
    with pytest.raises(ModelError, match=r"unsupported operators \['Resize'\]"):
        convert_to_fp16(src)
