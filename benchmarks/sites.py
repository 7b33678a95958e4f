"""Benchmark: hospital sites sharing one Triton pool vs each site alone on its own CPU.

Usage (from the repository root, dev install with ``requirements-triton-server.txt``)::

    python -m benchmarks.sites --sites 1 3 10 --studies-per-site 2 \
        --out benchmarks/results/sites-cpu-2core.json

Each site is a process of its own running the analysis pipeline
(:func:`ct_triage.server.pipeline.analyze_study`, what ``serve`` runs per study) on its own small
phantom studies (40 slices of 512 x 512) with ``CT_TRIAGE_RUNTIME=triton``-equivalent settings
and its opaque site id. All sites start together (a barrier) against one real ``tritonserver``
(2.51, from the ``nvidia-pytriton`` wheel; the generated CPU repository: Python backend, ONNX
Runtime, dynamic batching). The baseline, in the same run: one site alone, its studies one
after another with the local ONNX Runtime CPU runtime — what every site would see on its own
hardware, so N sites alone serve N times its rate.

Measured per scenario: studies/minute (all sites together), p50/p95 study latency, and where
the inference time goes: the client's wall time in ``predict`` split by Triton's own counters
into server compute (``nv_inference_compute_infer_duration_us``), server queueing
(``..._queue_duration_us``) and the rest — network, (de)serialisation and the server's
input/output handling. The JSON also holds the bytes per slice on the wire and a projection for
a GPU pool, with its assumptions written next to it.

On a small machine the sites and the pool share the same cores, so the pool numbers here are a
pessimistic bound: in a deployment each site has its own CPU for pre/post-processing and only
the pool's compute is shared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tritonserver launcher of the tests

#: GPU projection assumptions (not measured here: no GPU in this run).
GPU_ASSUMPTIONS: dict[str, Any] = {
    "gpu": "one data-centre GPU (A100/H100 class), Triton ONNX Runtime backend, TensorRT FP16",
    "gpu_slices_per_s": 2000.0,
    "link_bit_per_s": 1e9,
    "note": (
        "2,000 slices/s is an assumption, deliberately far below both the FLOP bound (the "
        "model's measured GFLOP per slice at 10 % of an H100's ~990 TFLOP/s FP16 peak) and a "
        "memory-traffic bound: a small 2-D network at 224 x 224 is limited by kernel launches "
        "and memory, not arithmetic. Each site reaches the pool over its own 1 Gbit/s link; "
        "its pre/post-processing runs on its own CPU as measured here for the local runtime "
        "minus the local inference time."
    ),
}


@dataclass
class StudyRecord:
    site: str
    latency_s: float
    predict_s: float
    slices: int


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class _Timed:
    """Wraps a predictor to time its calls (client wall time) and count slices."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.slices = 0

    @property
    def provider(self) -> str:
        return str(self.inner.provider)

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        t0 = time.perf_counter()
        out: npt.NDArray[np.float32] = self.inner.predict(batch)
        self.seconds += time.perf_counter() - t0
        self.slices += int(batch.shape[0])
        return out


def _site_worker(
    site: str,
    studies: list[str],
    out_root: str,
    runtime: dict[str, Any],
    barrier: Any,
    results: Any,
) -> None:
    import logging

    logging.disable(logging.WARNING)
    from ct_triage.models.lesions import load_lesion_segmenter
    from ct_triage.models.runtime.factory import RuntimeConfig
    from ct_triage.server.pipeline import analyze_study
    from ct_triage.server.settings import Settings
    from ct_triage.server.wiring import options_from

    model = load_lesion_segmenter(RuntimeConfig(**{"z_step_mm": 0.0, **runtime}))
    timed = _Timed(model.predictor)
    model.predictor = timed
    options = options_from(Settings())
    barrier.wait()
    records = []
    for n, study in enumerate(studies):
        before_s, before_n = timed.seconds, timed.slices
        t0 = time.perf_counter()
        analyze_study(Path(study), Path(out_root) / f"{site}-{n}", model, options)
        records.append(
            StudyRecord(
                site, time.perf_counter() - t0, timed.seconds - before_s, timed.slices - before_n
            ).__dict__
        )
    results.put(records)


def _metrics(server: Any) -> dict[str, float]:
    names = (
        "nv_inference_request_success",
        "nv_inference_exec_count",
        "nv_inference_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    )
    return {name: server.metric(name) for name in names}


def run_scenario(
    n_sites: int,
    studies: list[list[str]],
    runtime: dict[str, Any],
    work: Path,
    server: Any | None,
) -> dict[str, Any]:
    """All ``n_sites`` start together; returns the scenario's figures."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_sites + 1)
    results: Any = ctx.Queue()
    procs = []
    for i in range(n_sites):
        site_runtime = dict(runtime)
        if runtime.get("kind") == "triton":
            site_runtime["triton_site_id"] = f"site-{i:02d}"
        p = ctx.Process(
            target=_site_worker,
            args=(f"site-{i:02d}", studies[i], str(work), site_runtime, barrier, results),
        )
        p.start()
        procs.append(p)
    barrier.wait()
    before = _metrics(server) if server is not None else {}
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    for _ in procs:
        records += results.get(timeout=3600)
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    latencies = [r["latency_s"] for r in records]
    predict = sum(r["predict_s"] for r in records)
    slices = sum(r["slices"] for r in records)
    out: dict[str, Any] = {
        "sites": n_sites,
        "studies": len(records),
        "slices_inferred": slices,
        "wall_s": round(wall, 3),
        "studies_per_minute": round(60.0 * len(records) / wall, 3),
        "latency_p50_s": round(_percentile(latencies, 50), 3),
        "latency_p95_s": round(_percentile(latencies, 95), 3),
        "inference_share_of_latency": round(predict / sum(latencies), 3),
        "predict_wall_s": round(predict, 3),
    }
    if server is not None:
        after = _metrics(server)
        d = {k: after[k] - before[k] for k in after}
        us = 1e-6
        compute = d["nv_inference_compute_infer_duration_us"] * us
        queue = d["nv_inference_queue_duration_us"] * us
        io = (
            d["nv_inference_compute_input_duration_us"]
            + d["nv_inference_compute_output_duration_us"]
        ) * us
        rest = max(0.0, predict - compute - queue - io)
        out["triton"] = {
            "requests": d["nv_inference_request_success"],
            "executions": d["nv_inference_exec_count"],
            "mean_slices_per_execution": round(
                d["nv_inference_count"] / max(d["nv_inference_exec_count"], 1), 2
            ),
            "compute_s": round(compute, 3),
            "compute_per_slice_ms": round(1e3 * compute / max(slices, 1), 2),
        }
        out["inference_time_split"] = {
            "server_compute": round(compute / predict, 3),
            "server_queue": round(queue / predict, 3),
            "server_input_output": round(io / predict, 3),
            "network_and_serialisation": round(rest / predict, 3),
        }
    return out


def model_gflops_per_slice() -> float:
    """Multiply-adds x 2 of the shipped model's Conv/ConvTranspose nodes for one slice."""
    import onnx
    from onnx import shape_inference

    from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest

    manifest = load_manifest(WEIGHTS_DIR)
    model = onnx.load(str(WEIGHTS_DIR / manifest.file))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[0].ClearField("dim_param")
    dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(inferred.value_info) + list(inferred.output) + list(inferred.input)
    }
    inits = {t.name: list(t.dims) for t in graph.initializer}
    flops = 0.0
    for node in inferred.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = inits.get(node.input[1])
        if w is None:
            continue
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            if not out:
                continue
            flops += 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
        else:
            inp = shapes.get(node.input[0])
            if not inp:
                continue
            flops += 2.0 * float(np.prod(inp)) * float(np.prod(w[1:]))
    return flops / 1e9


def gpu_projection(
    local: dict[str, Any], pool: dict[str, Any], gflops: float, slice_bytes: int
) -> dict[str, Any]:
    """Studies/minute and latency of a GPU pool from the stated assumptions and the measured
    figures (local latency and its inference share, slices per study, bytes per slice)."""
    gpu_rate = float(GPU_ASSUMPTIONS["gpu_slices_per_s"])
    slices_per_study = pool["slices_inferred"] / pool["studies"]
    link_slices_per_s = float(GPU_ASSUMPTIONS["link_bit_per_s"]) / 8 / slice_bytes
    site_cpu_s = local["latency_p50_s"] * (1 - local["inference_share_of_latency"])
    transfer_s = slices_per_study / link_slices_per_s
    gpu_s = slices_per_study / gpu_rate
    pool_rate = 60 * gpu_rate / slices_per_study
    return {
        "assumptions": GPU_ASSUMPTIONS,
        "model_gflop_per_slice": round(gflops, 3),
        "flop_bound_slices_per_s_at_10pct_h100": round(990e3 * 0.10 / gflops),
        "slices_per_study": slices_per_study,
        "pool_studies_per_minute": round(pool_rate),
        "bytes_per_slice_on_the_wire": slice_bytes,
        "per_site_link_slices_per_s": round(link_slices_per_s, 1),
        "study_latency_s": {
            "site_cpu": round(site_cpu_s, 2),
            "network_transfer": round(transfer_s, 3),
            "gpu_compute": round(gpu_s, 3),
            "total": round(site_cpu_s + transfer_s + gpu_s, 2),
            "local_cpu_measured": local["latency_p50_s"],
        },
        "sites_one_gpu_serves_at_their_local_rate": round(pool_rate / local["studies_per_minute"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--studies-per-site", type=int, default=2)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/sites.json")
    args = parser.parse_args(argv)

    from triton_server import triton_server, triton_unavailable

    from ct_triage.dicom_bridge.synthetic import write_phantom_series
    from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest
    from ct_triage.models.phantom import generate, spec_from_seed

    reason = triton_unavailable()
    if reason:
        print(f"sites benchmark: {reason}", file=sys.stderr)
        return 2
    spec = load_manifest(WEIGHTS_DIR).input
    in_bytes = spec.channels * spec.height * spec.width * 4
    out_bytes = load_manifest(WEIGHTS_DIR).num_classes * spec.height * spec.width * 4
    most = max(args.sites)
    with tempfile.TemporaryDirectory(prefix="ct-triage-sites-") as tmp:
        root = Path(tmp)
        print(f"writing {most * args.studies_per_site} phantom studies...", file=sys.stderr)
        studies = []
        for i in range(most):
            site_studies = []
            for j in range(args.studies_per_site):
                folder = root / "studies" / f"s{i:02d}-{j}"
                ph = generate(spec_from_seed(100 + i * 10 + j, n_slices=args.slices))
                write_phantom_series(ph, folder)
                site_studies.append(str(folder))
            studies.append(site_studies)
        report: dict[str, Any] = {
            "benchmark": "sites",
            "date": time.strftime("%Y-%m-%d"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "study": f"phantom, {args.slices} slices of 512 x 512",
            "studies_per_site": args.studies_per_site,
            "protocol": args.protocol,
            "note": (
                "sites and pool share this machine's cores; 'alone' is one site on the whole "
                "machine, N sites alone = N x its rate on N machines"
            ),
        }
        print("baseline: one site alone, local ONNX Runtime CPU...", file=sys.stderr)
        local = run_scenario(
            1, studies, {"kind": "onnxruntime", "provider": "cpu"}, root / "out-local", None
        )
        report["alone"] = local
        report["pool"] = []
        with triton_server(root / "triton") as server:
            runtime = {
                "kind": "triton",
                "triton_url": server.url(args.protocol),
                "triton_protocol": args.protocol,
                "triton_timeout_s": 300.0,
            }
            for n in args.sites:
                print(f"{n} site(s) against one Triton...", file=sys.stderr)
                result = run_scenario(n, studies, runtime, root / f"out-{n}", server)
                result["alone_studies_per_minute_n_sites"] = round(
                    n * local["studies_per_minute"], 3
                )
                result["pool_vs_alone_throughput"] = round(
                    result["studies_per_minute"] / (n * local["studies_per_minute"]), 3
                )
                report["pool"].append(result)
        report["bytes_per_slice"] = {"request": in_bytes, "response": out_bytes}
        report["gpu_projection"] = gpu_projection(
            local, report["pool"][-1], model_gflops_per_slice(), in_bytes + out_bytes
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
