"""Generate a Triton model repository entry from a model directory (manifest + ONNX file).

Writes ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.onnx`` for Triton's
``onnxruntime_onnx`` platform. Input/output names, data types and dims are read from the ONNX
file itself (through ONNX Runtime) and checked against the manifest, so the repository cannot
drift from the model. The config has dynamic batching (preferred sizes, maximum queue delay),
an instance group (``KIND_GPU`` or ``KIND_CPU``) and, optionally, the TensorRT accelerator of
the ONNX Runtime backend (FP16, engine cache) in ``optimization.execution_accelerators``.

Command line (see ``deploy/triton/README.md``)::

    python -m ct_triage.models.runtime.triton_repo deploy/triton   # + deploy/triton-cpu
    python -m ct_triage.models.runtime.triton_repo deploy/triton --config-only
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ct_triage.models.errors import ModelError
from ct_triage.models.manifest import WEIGHTS_DIR, Manifest, load_manifest, verify_file

logger = logging.getLogger(__name__)

_ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@dataclass(frozen=True, slots=True)
class TritonModelSpec:
    """What goes into one ``config.pbtxt``.

    Parameters
    ----------
    name
        The model's name in the repository (and its folder).
    max_batch_size
        Largest batch Triton forms (the batch dimension is then implicit in ``dims``).
    preferred_batch_sizes
        Batch sizes the dynamic batcher aims for.
    max_queue_delay_us
        How long the batcher may hold a request to form a larger batch.
    instance_kind
        ``"gpu"`` (``KIND_GPU``) or ``"cpu"`` (``KIND_CPU``).
    instance_count
        Model instances per device (GPU) or in total (CPU).
    tensorrt
        Add the TensorRT accelerator (GPU only).
    tensorrt_fp16
        TensorRT precision FP16 (IO stays FP32).
    tensorrt_workspace_bytes
        TensorRT builder workspace.
    tensorrt_cache_path
        Engine cache directory inside the Triton container.
    cpu_threads
        ONNX Runtime intra-op threads per CPU instance (``0``: backend default).
    backend
        ``"onnxruntime"`` (Triton's ONNX Runtime backend, platform ``onnxruntime_onnx``) or
        ``"python"`` (Triton's Python backend running :mod:`.triton_pymodel`, which runs the same
        ONNX file with ONNX Runtime on the CPU; for Triton builds without the ONNX Runtime
        backend, such as the one in the ``nvidia-pytriton`` wheel).
    """

    name: str = "ct_triage_lesion"
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    instance_kind: Literal["gpu", "cpu"] = "gpu"
    instance_count: int = 1
    tensorrt: bool = True
    tensorrt_fp16: bool = True
    tensorrt_workspace_bytes: int = 2 << 30
    tensorrt_cache_path: str = "/models/.trt_cache"
    cpu_threads: int = 0
    backend: Literal["onnxruntime", "python"] = "onnxruntime"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} outside 1..{self.max_batch_size}")
        if self.tensorrt and self.instance_kind == "cpu":
            raise ValueError("the TensorRT accelerator needs instance_kind='gpu'")
        if self.backend == "python" and self.instance_kind != "cpu":
            raise ValueError("the Python-backend model runs on the CPU: instance_kind='cpu'")
        if self.instance_count < 1 or self.max_queue_delay_us < 0:
            raise ValueError("instance_count must be >= 1 and max_queue_delay_us >= 0")


@dataclass(frozen=True, slots=True)
class _Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]


def _read_io(model_path: Path, manifest: Manifest) -> tuple[_Tensor, _Tensor]:
    """The ONNX file's single input and output, without the batch dim, checked."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise ModelError(f"{model_path} has {len(ins)} inputs and {len(outs)} outputs; expected 1")
    tensors = []
    for arg in (ins[0], outs[0]):
        shape: list[Any] = list(arg.shape)
        if len(shape) != 4 or isinstance(shape[0], int):
            raise ModelError(
                f"{model_path}: {arg.name} has shape {shape}; expected a dynamic batch "
                "dimension then (C, H, W)"
            )
        if not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ModelError(f"{model_path}: {arg.name} must have fixed (C, H, W), got {shape}")
        if arg.type not in _ORT_TO_TRITON:
            raise ModelError(f"{model_path}: {arg.name} has unsupported type {arg.type}")
        tensors.append(_Tensor(arg.name, _ORT_TO_TRITON[arg.type], tuple(shape[1:])))
    inp, out = tensors
    spec = manifest.input
    if (inp.name, out.name) != (spec.input_name, spec.output_name):
        raise ModelError(
            f"{model_path} has IO {inp.name!r} -> {out.name!r}; the manifest says "
            f"{spec.input_name!r} -> {spec.output_name!r}"
        )
    if inp.dims != (spec.channels, spec.height, spec.width) or out.dims != (
        manifest.num_classes,
        spec.height,
        spec.width,
    ):
        raise ModelError(f"{model_path} IO dims {inp.dims} -> {out.dims} disagree with manifest")
    return inp, out


def render_config(spec: TritonModelSpec, inp: _Tensor, out: _Tensor, manifest: Manifest) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""

    def tensor(t: _Tensor) -> str:
        dims = ", ".join(str(d) for d in t.dims)
        return (
            f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}'
        )

    preferred = ", ".join(str(b) for b in spec.preferred_batch_sizes)
    kind = "KIND_GPU" if spec.instance_kind == "gpu" else "KIND_CPU"
    lines = [
        f"# Generated by ct_triage.models.runtime.triton_repo from {manifest.file}",
        f"# model {manifest.name} {manifest.version}, sha256 {manifest.sha256}",
        "# Do not edit: regenerate (see deploy/triton/README.md).",
        f'name: "{spec.name}"',
        'backend: "python"' if spec.backend == "python" else 'platform: "onnxruntime_onnx"',
        f"max_batch_size: {spec.max_batch_size}",
        f"input [\n{tensor(inp)}\n]",
        f"output [\n{tensor(out)}\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {spec.instance_count}",
        f"    kind: {kind}",
        "  }",
        "]",
    ]
    if spec.tensorrt:
        params = {
            "precision_mode": "FP16" if spec.tensorrt_fp16 else "FP32",
            "max_workspace_size_bytes": str(spec.tensorrt_workspace_bytes),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": spec.tensorrt_cache_path,
        }
        body = "\n".join(
            f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items()
        )
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator [",
            "      {",
            '        name: "tensorrt"',
            body,
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    if spec.instance_kind == "cpu" and spec.cpu_threads > 0:
        lines += [
            "parameters {",
            '  key: "intra_op_thread_count"',
            f'  value: {{ string_value: "{spec.cpu_threads}" }}',
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_model_repository(
    model_dir: Path,
    repo: Path,
    spec: TritonModelSpec | None = None,
    *,
    copy_model: bool = True,
) -> Path:
    """Write ``<repo>/<spec.name>/config.pbtxt`` and ``<repo>/<spec.name>/1/model.onnx``.

    Parameters
    ----------
    model_dir
        Directory with ``manifest.json`` and the (FP32) ONNX file it pins.
    repo
        The Triton model repository root (created if needed).
    spec
        Batching, instances, accelerator; ``None``: :class:`TritonModelSpec` defaults.
    copy_model
        Also copy the model file (``False``: write the config only, e.g. for version control).

    Returns
    -------
    pathlib.Path
        The model's folder ``<repo>/<spec.name>``.

    Raises
    ------
    ModelError
        The manifest or model file is invalid, or the ONNX IO disagrees with the manifest.
    """
    spec = spec or TritonModelSpec()
    manifest = load_manifest(model_dir)
    model_path = verify_file(manifest, model_dir)
    inp, out = _read_io(model_path, manifest)
    folder = Path(repo) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(render_config(spec, inp, out, manifest), encoding="utf-8")
    version_dir = folder / "1"
    if spec.backend == "python":  # the code is versioned with the config
        version_dir.mkdir(exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("triton_pymodel.py"), version_dir / "model.py")
    if copy_model:
        version_dir.mkdir(exist_ok=True)
        shutil.copyfile(model_path, version_dir / "model.onnx")
    logger.info("wrote Triton model %s into %s", spec.name, repo)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Write both repositories from one model directory.

    The GPU repository (``repo``): ``ct_triage_lesion`` on the ONNX Runtime backend (TensorRT
    accelerator, ``KIND_GPU``) and ``ct_triage_lesion_cpu`` (same backend, ``KIND_CPU``). The CPU
    repository (``--cpu-repo``, default ``<repo>-cpu``): ``ct_triage_lesion`` on the Python
    backend (ONNX Runtime inside, ``KIND_CPU``), for a CPU-only pool. Same model name in both, so
    a site's settings name only the server.
    """
    parser = argparse.ArgumentParser(description="Generate the Triton model repositories.")
    parser.add_argument("repo", type=Path, help="the GPU repository (e.g. deploy/triton)")
    parser.add_argument("--cpu-repo", type=Path, default=None, help="default: <repo>-cpu")
    parser.add_argument("--model-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--name", default="ct_triage_lesion")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--no-tensorrt", action="store_true", help="GPU entry without TensorRT")
    parser.add_argument("--fp32", action="store_true", help="TensorRT precision FP32")
    parser.add_argument("--cpu-instances", type=int, default=1, help="CPU pool model instances")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: ONNX Runtime decides")
    parser.add_argument("--config-only", action="store_true", help="do not copy model.onnx")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cpu_repo: Path = args.cpu_repo or args.repo.with_name(args.repo.name + "-cpu")
    preferred = tuple(b for b in (8, 16, 32) if b <= args.max_batch_size) or (1,)
    gpu = TritonModelSpec(
        name=args.name,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=preferred,
        tensorrt=not args.no_tensorrt,
        tensorrt_fp16=not args.fp32,
    )
    gpu_cpu = TritonModelSpec(
        name=f"{args.name}_cpu",
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=preferred,
        instance_kind="cpu",
        instance_count=2,
        tensorrt=False,
        cpu_threads=4,
    )
    python = TritonModelSpec(
        name=args.name,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=preferred,
        instance_kind="cpu",
        instance_count=args.cpu_instances,
        tensorrt=False,
        cpu_threads=args.cpu_threads,
        backend="python",
    )
    for repo, entry in ((args.repo, gpu), (args.repo, gpu_cpu), (cpu_repo, python)):
        folder = write_model_repository(
            args.model_dir, repo, entry, copy_model=not args.config_only
        )
        print(folder)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
