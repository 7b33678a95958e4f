"""ONNX Runtime implementation of the :class:`~ct_triage.models.runtime.base.Predictor` protocol.

Execution providers are asked for by short name (``"cpu"``, ``"cuda"``, ``"tensorrt"``). The
provider actually used is read back from the session (``session.get_providers()[0]``), never
from ``onnxruntime.get_available_providers()``: onnxruntime-gpu lists CUDA and TensorRT as
available even when their shared libraries are missing, and then silently runs on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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

    Raises
    ------
    RuntimeUnavailable
        Unknown provider name, onnxruntime missing, or (``strict``) the requested provider
        did not load.
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
    ) -> None:
        key = provider.lower()
        if key not in PROVIDER_CHAINS:
            raise RuntimeUnavailable(
                f"unknown execution provider {provider!r}: choose one of "
                f"{', '.join(sorted(PROVIDER_CHAINS))}"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"model file {model_path} is missing")
        ort = _import_ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        wanted = PROVIDER_CHAINS[key]
        available = set(ort.get_available_providers())
        chain = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=chain
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph...)
            if key != "cpu" and not strict:
                logger.warning(
                    "ONNX Runtime could not start %s (%s); retrying on CPU", wanted[0], exc
                )
                try:
                    self._session = ort.InferenceSession(
                        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc2:
                    raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc2}") from exc2
            else:
                raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
        used: list[str] = list(self._session.get_providers())
        self._provider = used[0] if used else ""
        if self._provider != wanted[0]:
            message = (
                f"requested execution provider {wanted[0]} is not usable here; "
                f"ONNX Runtime runs on {self._provider}"
            )
            if strict:
                raise RuntimeUnavailable(message)
            logger.warning("%s (falling back)", message)
        logger.info("ONNX model %s loaded on %s", model_path.name, self._provider)
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if not inputs or not outputs:
            raise ModelError(f"ONNX model {model_path} has no inputs or outputs")
        self._input_name: str = inputs[0].name
        self._output_name: str = outputs[0].name
        self._input_shape: tuple[Any, ...] = tuple(inputs[0].shape)
        self._max_batch = max_batch
        self.model_path = model_path

    @property
    def provider(self) -> str:
        """The execution provider the session actually uses, e.g. ``CPUExecutionProvider``."""
        return self._provider

    @property
    def input_shape(self) -> tuple[Any, ...]:
        """The model's declared input shape (symbolic dimensions are strings)."""
        return self._input_shape

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
                (out,) = self._session.run(
                    [self._output_name], {self._input_name: x[start : start + self._max_batch]}
                )
                parts.append(np.asarray(out, dtype=np.float32))
        except Exception as exc:
            raise InferenceError(
                f"ONNX Runtime failed on a batch of shape {x.shape}: {exc}"
            ) from exc
        result = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if not np.isfinite(result).all():
            raise InferenceError("the model produced non-finite outputs")
        return result
