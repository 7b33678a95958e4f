"""Triton Python-backend model: the shipped ONNX network on ONNX Runtime, for CPU pools.

The generator (:mod:`ct_triage.models.runtime.triton_repo`) copies this file as
``<repo>/<name>/1/model.py`` beside ``model.onnx``. It runs inside Triton's Python backend stub
(``triton_python_backend_utils`` exists only there), so it imports nothing from ct_triage: only
NumPy and ONNX Runtime, which the stub's Python must have.

Each ``execute`` call receives the requests Triton's dynamic batcher gathered — from one site or
several — and runs them as one ONNX Runtime batch. The opaque site id a client sends as the
request parameter ``ct_triage_site`` is counted per site (``ct_triage_site_requests_total`` and
``ct_triage_site_slices_total`` on Triton's metrics port) for metrics and quotas; nothing else
about a request is kept or logged.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

#: The request parameter that carries a site's opaque id.
SITE_PARAMETER = "ct_triage_site"
_SITE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _site_of(parameters_json: str) -> str:
    """The request's site id, or ``"unknown"`` (malformed ids are not echoed as labels)."""
    try:
        value = json.loads(parameters_json or "{}").get(SITE_PARAMETER, "")
    except (ValueError, AttributeError):
        return "unknown"
    return value if isinstance(value, str) and _SITE_RE.match(value) else "unknown"


class TritonPythonModel:
    """The interface Triton's Python backend calls (``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load ``model.onnx`` of this version with ONNX Runtime on the CPU."""
        import onnxruntime

        self._pb: Any = importlib.import_module("triton_python_backend_utils")
        config = json.loads(args["model_config"])
        self._input = str(config["input"][0]["name"])
        self._output = str(config["output"][0]["name"])
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_thread_count", {}).get("string_value", "0") or 0)
        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        family = self._pb.MetricFamily
        self._requests_family = family(
            name="ct_triage_site_requests_total",
            description="Inference requests per site (opaque site id)",
            kind=family.COUNTER,
        )
        self._slices_family = family(
            name="ct_triage_site_slices_total",
            description="Slices inferred per site (opaque site id)",
            kind=family.COUNTER,
        )
        self._metrics: dict[str, tuple[Any, Any]] = {}
        self._sent: list[np.ndarray[Any, np.dtype[np.float32]]] = []

    def _count(self, site: str, slices: int) -> None:
        if site not in self._metrics:
            labels = {"site": site}
            self._metrics[site] = (
                self._requests_family.Metric(labels=labels),
                self._slices_family.Metric(labels=labels),
            )
        requests, counted = self._metrics[site]
        requests.increment(1)
        counted.increment(slices)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One ONNX Runtime run over all gathered requests, split back per request."""
        pb = self._pb
        # Tensors cross the stub through DLPack, not as_numpy()/Tensor(name, array): the 2.51
        # stub's NumPy path is built for NumPy 1 and, under NumPy 2, reads inputs with zero
        # strides and sends empty outputs. DLPack is ABI-independent.
        arrays = [
            np.array(np.from_dlpack(pb.get_input_tensor_by_name(r, self._input)), np.float32)
            for r in requests
        ]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        try:
            (probabilities,) = self._session.run([self._output], {self._input: batch})
        except Exception as exc:  # answered per request; the model stays loaded
            error = pb.TritonError(f"ONNX Runtime failed: {exc}")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        self._sent = []  # the DLPack tensors borrow these buffers until they are sent
        start = 0
        for request, array in zip(requests, arrays, strict=True):
            n = int(array.shape[0])
            self._count(_site_of(request.parameters()), n)
            out = np.ascontiguousarray(probabilities[start : start + n], dtype=np.float32)
            self._sent.append(out)
            tensor = pb.Tensor.from_dlpack(self._output, out)
            responses.append(pb.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses

    def finalize(self) -> None:
        """Release the session."""
        self._session = None
