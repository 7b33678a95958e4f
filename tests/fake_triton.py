"""What is left of the fake Triton: an HTTP gateway answering 502/503/504 on demand.

Every other Triton test runs against the real ``tritonserver`` (``tests/triton_server.py``,
``tests/integration/test_triton_server.py``). What the real server cannot do here, and this
fake still does: answer an inference with an HTTP 503 (or another status) on demand, as a load
balancer or gateway in front of a shared pool does while it restarts — the transient statuses
that :class:`~ct_triage.models.runtime.triton.TritonPredictor` retries (a real server killed or
slowed is tested for real). It speaks the KServe v2 HTTP endpoints tritonclient uses, with the
binary-data extension; ONNX Runtime on the CPU runs the model behind them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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
