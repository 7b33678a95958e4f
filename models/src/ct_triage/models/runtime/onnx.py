"""ONNX Runtime implementation of the :class:`~ct_triage.models.runtime.base.Predictor` protocol.

Execution providers are asked for by short name (``"cpu"``, ``"cuda"``, ``"tensorrt"``). The
provider actually used is read back from the session (``session.get_providers()[0]``), never
from ``onnxruntime.get_available_providers()``: onnxruntime-gpu lists CUDA and TensorRT as
available even when their shared libraries are missing, and then silently runs on the CPU.

GPU deployments tune the providers with :class:`CudaOptions` and :class:`TensorrtOptions`
(device, cuDNN algorithm search, memory arena, TensorRT engine cache, FP16, workspace). A GPU
provider that does not start falls back along TensorRT -> CUDA -> CPU with a WARNING naming
what was requested and what runs; ``strict`` turns that into :class:`RuntimeUnavailable`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import InferenceError, ModelError, RuntimeUnavailable

logger = logging.getLogger(__name__)

#: Short provider names -> the ONNX Runtime execution providers to request, in order.
PROVIDER_CHAINS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

_GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})

#: What to install for the GPU execution providers (named in every related error).
GPU_EXTRA_HINT = (
    "GPU execution providers need the 'gpu' extra: pip install 'ct-triage-models[gpu]' "
    "(onnxruntime-gpu, which replaces onnxruntime) plus the CUDA/cuDNN (and, for TensorRT, "
    "TensorRT) libraries of that onnxruntime-gpu build"
)


@dataclass(frozen=True, slots=True)
class CudaOptions:
    """Options of the CUDA execution provider (ONNX Runtime ``CUDAExecutionProvider``).

    Parameters
    ----------
    device_id
        The GPU to run on.
    cudnn_conv_algo_search
        ``"EXHAUSTIVE"`` (benchmark every algorithm on the first call of each shape: fastest
        afterwards), ``"HEURISTIC"`` or ``"DEFAULT"``.
    arena_extend_strategy
        How the GPU memory arena grows: ``"kNextPowerOfTwo"`` or ``"kSameAsRequested"``
        (tighter, for a GPU shared with other processes).
    gpu_mem_limit_bytes
        Cap of the arena; ``None``: ONNX Runtime's default (no cap).
    """

    device_id: int = 0
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    gpu_mem_limit_bytes: int | None = None

    def as_provider_options(self) -> dict[str, str]:
        """The ``provider_options`` dictionary ONNX Runtime expects (all values strings)."""
        opts = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "arena_extend_strategy": self.arena_extend_strategy,
            "do_copy_in_default_stream": "1",
        }
        if self.gpu_mem_limit_bytes is not None:
            opts["gpu_mem_limit"] = str(int(self.gpu_mem_limit_bytes))
        return opts


@dataclass(frozen=True, slots=True)
class TensorrtOptions:
    """Options of the TensorRT execution provider (ONNX Runtime ``TensorrtExecutionProvider``).

    Parameters
    ----------
    device_id
        The GPU to run on.
    fp16
        Let TensorRT pick FP16 kernels (inputs and outputs stay FP32).
    engine_cache_dir
        Where built engines are cached (keyed by model, shapes, GPU and TensorRT version);
        ``None`` disables the cache, and every start-up rebuilds the engine (minutes).
    max_workspace_bytes
        TensorRT builder workspace.
    profile_shapes
        ``(min, opt, max)`` optimisation-profile shapes, e.g. ``("image:1x1x224x224",
        "image:16x1x224x224", "image:32x1x224x224")``; ``None``: TensorRT builds an engine
        per new input shape.
    """

    device_id: int = 0
    fp16: bool = False
    engine_cache_dir: Path | None = None
    max_workspace_bytes: int = 2 << 30
    profile_shapes: tuple[str, str, str] | None = None

    def as_provider_options(self) -> dict[str, str]:
        """The ``provider_options`` dictionary ONNX Runtime expects (all values strings)."""
        opts = {
            "device_id": str(self.device_id),
            "trt_fp16_enable": "True" if self.fp16 else "False",
            "trt_max_workspace_size": str(int(self.max_workspace_bytes)),
            "trt_engine_cache_enable": "False",
        }
        if self.engine_cache_dir is not None:
            opts["trt_engine_cache_enable"] = "True"
            opts["trt_engine_cache_path"] = str(self.engine_cache_dir)
            opts["trt_timing_cache_enable"] = "True"
            opts["trt_timing_cache_path"] = str(self.engine_cache_dir)
        if self.profile_shapes is not None:
            lo, opt, hi = self.profile_shapes
            opts["trt_profile_min_shapes"] = lo
            opts["trt_profile_opt_shapes"] = opt
            opts["trt_profile_max_shapes"] = hi
        return opts


def is_available(provider: str = "cpu") -> bool:
    """Whether ONNX Runtime is installed and *lists* ``provider`` (``cpu``/``cuda``/``tensorrt``).

    Listing is necessary, not sufficient: only a session proves that a GPU provider loads
    (see :attr:`OnnxPredictor.provider`). Does not import onnxruntime when it is absent.
    """
    return unavailable_reason(provider) is None


def unavailable_reason(provider: str = "cpu") -> str | None:
    """Why ``provider`` cannot run here (naming the extra to install), or ``None``."""
    key = provider.lower()
    if key not in PROVIDER_CHAINS:
        choices = ", ".join(sorted(PROVIDER_CHAINS))
        return f"unknown execution provider {provider!r}: choose one of {choices}"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed: pip install ct-triage-models"
    ort = _import_ort()
    wanted = PROVIDER_CHAINS[key][0]
    if wanted not in set(ort.get_available_providers()):
        return f"ONNX Runtime here does not offer {wanted}. {GPU_EXTRA_HINT}"
    return None


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise RuntimeUnavailable(
            "onnxruntime is not installed: install ct-triage-models (pip install onnxruntime)"
        ) from exc
    return onnxruntime


class OnnxPredictor:
    """Runs an ONNX model with ONNX Runtime.

    Parameters
    ----------
    model_path
        The ``.onnx`` file. Its first input is ``(N, C, H, W)`` float32 and its first output
        ``(N, K, H, W)`` float32 class probabilities.
    provider
        ``"cpu"``, ``"cuda"`` or ``"tensorrt"``. GPU providers fall back along the chain
        (TensorRT -> CUDA -> CPU) with a WARNING, unless ``strict`` is set.
    threads
        Intra-op threads for the CPU provider; ``None`` lets ONNX Runtime decide.
    strict
        Raise :class:`RuntimeUnavailable` instead of falling back to another provider.
    max_batch
        Largest batch sent to the session in one call (bounds memory).
    cuda
        CUDA provider options (also used when TensorRT falls back to CUDA); ``None``:
        defaults on device 0.
    tensorrt
        TensorRT provider options; ``None``: defaults on the CUDA options' device.
    io_binding
        On a GPU provider, bind inputs and outputs explicitly (one host-to-device copy in,
        one device-to-host copy out, no per-run allocation by the session). Ignored on CPU.

    Raises
    ------
    RuntimeUnavailable
        Unknown provider name, onnxruntime missing, the TensorRT engine cache directory is
        not writable, or (``strict``) the requested provider did not load.
    ModelError
        The model file is missing or ONNX Runtime cannot load it.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        provider: str = "cpu",
        threads: int | None = None,
        strict: bool = False,
        max_batch: int = 32,
        cuda: CudaOptions | None = None,
        tensorrt: TensorrtOptions | None = None,
        io_binding: bool = False,
    ) -> None:
        key = provider.lower()
        if key not in PROVIDER_CHAINS:
            raise RuntimeUnavailable(
                f"unknown execution provider {provider!r}: choose one of "
                f"{', '.join(sorted(PROVIDER_CHAINS))}"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"model file {model_path} is missing")
        ort = _import_ort()
        cuda = cuda if cuda is not None else CudaOptions()
        tensorrt = tensorrt if tensorrt is not None else TensorrtOptions(device_id=cuda.device_id)
        options = self._session_options(ort, threads)
        wanted = PROVIDER_CHAINS[key]
        available = set(ort.get_available_providers())
        if key == "tensorrt" and tensorrt.engine_cache_dir is not None:
            _prepare_cache_dir(tensorrt.engine_cache_dir)
        chain = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        provider_options = {
            "CUDAExecutionProvider": cuda.as_provider_options(),
            "TensorrtExecutionProvider": tensorrt.as_provider_options(),
        }
        requested: list[Any] = [
            (p, provider_options[p]) if p in provider_options else p for p in chain
        ]
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=requested
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph...)
            if key == "cpu":
                raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
            # Does the model itself load? Then the GPU provider is what failed.
            try:
                self._session = ort.InferenceSession(
                    str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc2:
                raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc2}") from exc2
            if strict:
                raise RuntimeUnavailable(
                    f"requested execution provider {wanted[0]} failed to start ({exc}). "
                    f"{GPU_EXTRA_HINT}"
                ) from exc
            logger.warning(
                "ONNX Runtime could not start %s (%s); running on CPUExecutionProvider",
                wanted[0],
                exc,
            )
        used: list[str] = list(self._session.get_providers())
        self._provider = used[0] if used else ""
        if self._provider != wanted[0]:
            message = (
                f"requested execution provider {wanted[0]} is not usable here; "
                f"ONNX Runtime runs on {self._provider}"
            )
            if strict:
                raise RuntimeUnavailable(f"{message}. {GPU_EXTRA_HINT}")
            logger.warning("%s (falling back)", message)
        logger.info("ONNX model %s loaded on %s", model_path.name, self._provider)
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if not inputs or not outputs:
            raise ModelError(f"ONNX model {model_path} has no inputs or outputs")
        self._input_name: str = inputs[0].name
        self._output_name: str = outputs[0].name
        self._input_shape: tuple[Any, ...] = tuple(inputs[0].shape)
        self._output_shape: tuple[Any, ...] = tuple(outputs[0].shape)
        self._max_batch = max_batch
        self._device_id = (
            tensorrt.device_id if self._provider == "TensorrtExecutionProvider" else cuda.device_id
        )
        self._io_binding = io_binding and self._provider in _GPU_PROVIDERS
        self._ort = ort
        self.model_path = model_path

    @staticmethod
    def _session_options(ort: Any, threads: int | None) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_mem_pattern = True
        options.enable_cpu_mem_arena = True
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        return options

    @property
    def provider(self) -> str:
        """The execution provider the session actually uses, e.g. ``CPUExecutionProvider``."""
        return self._provider

    @property
    def input_shape(self) -> tuple[Any, ...]:
        """The model's declared input shape (symbolic dimensions are strings)."""
        return self._input_shape

    @property
    def output_shape(self) -> tuple[Any, ...]:
        """The model's declared output shape (symbolic dimensions are strings)."""
        return self._output_shape

    @property
    def io_binding(self) -> bool:
        """Whether runs use explicit IO binding (only ever on a GPU provider)."""
        return self._io_binding

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run ``(N, C, H, W)`` float32 inputs, return ``(N, K, H, W)`` float32 probabilities.

        Raises
        ------
        InferenceError
            Wrong input rank, a runtime failure, or non-finite output.
        """
        if batch.ndim != 4:
            raise InferenceError(f"expected a (N, C, H, W) batch, got shape {batch.shape}")
        if batch.shape[0] == 0:
            raise InferenceError("empty batch")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        parts: list[npt.NDArray[np.float32]] = []
        try:
            for start in range(0, x.shape[0], self._max_batch):
                parts.append(self._run(x[start : start + self._max_batch]))
        except Exception as exc:
            raise InferenceError(
                f"ONNX Runtime ({self._provider}) failed on a batch of shape {x.shape}: {exc}"
            ) from exc
        result = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if not np.isfinite(result).all():
            raise InferenceError("the model produced non-finite outputs")
        return result

    def _run(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if not self._io_binding:
            (out,) = self._session.run([self._output_name], {self._input_name: chunk})
            return np.asarray(out, dtype=np.float32)
        binding = self._session.io_binding()
        device_input = self._ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(chunk), "cuda", self._device_id
        )
        binding.bind_ortvalue_input(self._input_name, device_input)
        binding.bind_output(self._output_name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()
        return np.asarray(out, dtype=np.float32)


def _prepare_cache_dir(path: Path) -> None:
    """Create the TensorRT engine cache directory and check that it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RuntimeUnavailable(
            f"TensorRT engine cache directory {path} is not writable: {exc}"
        ) from exc
