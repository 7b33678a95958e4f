"""A fake Triton Inference Server for the tests (Triton itself cannot run here).

It speaks the real wire protocols that tritonclient uses, on a free loopback port:

- HTTP: the KServe v2 REST endpoints (``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/<m>/ready``, ``/v2/models/<m>``, ``/v2/models/<m>/config``,
  ``/v2/models/<m>/infer``) with the binary-data extension (``Inference-Header-Content-Length``
  + JSON + raw little-endian tensor bytes);
- gRPC: ``inference.GRPCInferenceService`` from ``tritonclient.grpc.service_pb2_grpc``.

Behind both, an ONNX Runtime CPU session runs the model. What it cannot show: Triton's own
batching, TensorRT, TLS.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ct_triage.models.manifest import Manifest, load_manifest

MODEL = "ct_triage_lesion"


@dataclass
class FakeModel:
    """What the fake server serves, and how it misbehaves."""

    session: Any
    manifest: Manifest
    ready: bool = True
    input_dims: list[int] | None = None  # metadata override (C, H, W)
    fail_next: int = 0  # transient failures to answer before succeeding
    fail_status: int = 503
    infer_calls: list[tuple[int, ...]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        spec = self.manifest.input
        dims = self.input_dims or [spec.channels, spec.height, spec.width]
        out = [self.manifest.num_classes, spec.height, spec.width]
        return {
            "name": MODEL,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": spec.input_name, "datatype": "FP32", "shape": [-1, *dims]}],
            "outputs": [{"name": spec.output_name, "datatype": "FP32", "shape": [-1, *out]}],
        }

    def run(self, name: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.infer_calls.append(tuple(x.shape))
        (out,) = self.session.run(None, {name: x})
        return np.asarray(out, dtype=np.float32)


def fake_model(model_dir: Path) -> FakeModel:
    """A :class:`FakeModel` serving the ONNX model of ``model_dir`` with ONNX Runtime."""
    import onnxruntime

    manifest = load_manifest(model_dir)
    session = onnxruntime.InferenceSession(
        str(model_dir / manifest.file), providers=["CPUExecutionProvider"]
    )
    return FakeModel(session=session, manifest=manifest)


# -- fake HTTP server ------------------------------------------------------------------------


def http_handler(model: FakeModel) -> type[BaseHTTPRequestHandler]:
    prefix = re.compile(rf"^/v2/models/{MODEL}(?:/versions/\d+)?(?P<rest>/.*)?$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def do_GET(self) -> None:
            if self.path in ("/v2/health/live", "/v2/health/ready"):
                return self._send(200)
            m = prefix.match(self.path)
            if m is None:
                return self._json(404, {"error": f"unknown path {self.path}"})
            rest = m.group("rest") or ""
            if rest == "/ready":
                return self._send(200 if model.ready else 400)
            if not model.ready:
                return self._json(400, {"error": f"model {MODEL} is not ready"})
            if rest == "":
                return self._json(200, model.metadata())
            if rest == "/config":
                return self._json(200, {"name": MODEL, "max_batch_size": 4})
            return self._json(404, {"error": f"unknown path {self.path}"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            m = prefix.match(self.path)
            if m is None or m.group("rest") != "/infer":
                return self._json(404, {"error": f"unknown path {self.path}"})
            if model.fail_next > 0:
                model.fail_next -= 1
                return self._json(model.fail_status, {"error": "fake: try again"})
            header_len = int(self.headers.get("Inference-Header-Content-Length", len(body)))
            request = json.loads(body[:header_len])
            (inp,) = request["inputs"]
            size = int(inp["parameters"]["binary_data_size"])
            assert inp["datatype"] == "FP32"
            x = np.frombuffer(body[header_len : header_len + size], dtype="<f4")
            probs = model.run(inp["name"], x.reshape(inp["shape"]))
            raw = probs.astype("<f4").tobytes()
            header = json.dumps(
                {
                    "model_name": MODEL,
                    "outputs": [
                        {
                            "name": model.manifest.input.output_name,
                            "datatype": "FP32",
                            "shape": list(probs.shape),
                            "parameters": {"binary_data_size": len(raw)},
                        }
                    ],
                }
            ).encode()
            self._send(
                200,
                header + raw,
                {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            )

    return Handler


@contextmanager
def http_server(model: FakeModel) -> Iterator[str]:
    """Serve ``model`` over the KServe v2 HTTP protocol; yields ``host:port``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), http_handler(model))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- fake gRPC server ------------------------------------------------------------------------


def grpc_server(model: FakeModel) -> tuple[Any, int]:
    grpc = pytest.importorskip("grpc")
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
            return service_pb2.ServerLiveResponse(live=True)

        def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return service_pb2.ServerReadyResponse(ready=True)

        def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return service_pb2.ModelReadyResponse(ready=model.ready and request.name == MODEL)

        def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            if not model.ready:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"model {MODEL} is not ready")
            meta = model.metadata()
            return service_pb2.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[
                    service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]
                ],
                outputs=[
                    service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]
                ],
            )

        def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
            config = model_config_pb2.ModelConfig(name=MODEL, max_batch_size=4)
            return service_pb2.ModelConfigResponse(config=config)

        def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            if model.fail_next > 0:
                model.fail_next -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake: try again")
            (inp,) = request.inputs
            assert inp.datatype == "FP32"
            x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(list(inp.shape))
            probs = model.run(inp.name, x)
            out = service_pb2.ModelInferResponse.InferOutputTensor(
                name=model.manifest.input.output_name, datatype="FP32", shape=list(probs.shape)
            )
            return service_pb2.ModelInferResponse(
                model_name=MODEL, outputs=[out], raw_output_contents=[probs.astype("<f4").tobytes()]
            )

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@contextmanager
def serving(model: FakeModel, protocol: str) -> Iterator[str]:
    """Serve ``model`` over ``"http"`` or ``"grpc"``; yields ``host:port``.

    Skips the test when tritonclient lacks that protocol (the ``triton`` extra).
    """
    from ct_triage.models.runtime.triton import is_available

    if not is_available(protocol):
        pytest.skip(f"tritonclient[{protocol}] is not installed (the 'triton' extra)")
    if protocol == "http":
        with http_server(model) as url:
            yield url
        return
    server, port = grpc_server(model)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
