"""ONNX export of the lesion network, the parity check against torch, and the manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ct_triage.models.manifest import InputSpec, Manifest, TrainingInfo, sha256_of, write_manifest
from ct_triage.models.nets import SoftmaxHead

logger = logging.getLogger(__name__)

MODEL_FILE = "lesion_seg.onnx"
MODEL_NAME = "ct-triage-lesion-unet2d"
OPSET = 17
#: Largest accepted |ORT - torch| difference of the output probabilities.
PARITY_TOLERANCE = 1e-4
LABELS = {0: "background", 1: "ground-glass opacity", 2: "consolidation"}


def export_onnx(
    net: nn.Module, spec: InputSpec, path: Path, *, background_bias: float = 0.0
) -> Path:
    """Export ``net`` (logits) with a softmax head to ONNX (opset 17, dynamic batch axis)."""
    import onnx

    model = SoftmaxHead(net, background_bias).eval().cpu()
    dummy = torch.zeros(2, spec.channels, spec.height, spec.width)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[spec.input_name],
        output_names=[spec.output_name],
        dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return path


def parity_max_abs_diff(
    net: nn.Module,
    path: Path,
    spec: InputSpec,
    *,
    batch: int = 3,
    seed: int = 0,
    background_bias: float = 0.0,
) -> float:
    """Max |ORT - torch| of the probabilities on a random input in ``[0, 1]``."""
    from ct_triage.models.runtime.onnx import OnnxPredictor

    rng = np.random.default_rng(seed)
    x = rng.random((batch, spec.channels, spec.height, spec.width), dtype=np.float32)
    with torch.no_grad():
        ref = SoftmaxHead(net, background_bias).eval().cpu()(torch.from_numpy(x)).numpy()
    got = OnnxPredictor(path, provider="cpu").predict(x)
    return float(np.abs(ref - got).max())


def write_model_dir(
    net: nn.Module,
    spec: InputSpec,
    out_dir: Path,
    *,
    version: str,
    training: TrainingInfo,
    metrics: dict[str, float],
    background_bias: float = 0.0,
) -> Manifest:
    """Export, check parity, and write ``lesion_seg.onnx`` + ``manifest.json`` into ``out_dir``.

    Raises
    ------
    RuntimeError
        The ONNX output differs from torch by more than :data:`PARITY_TOLERANCE`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = export_onnx(net, spec, out_dir / MODEL_FILE, background_bias=background_bias)
    diff = parity_max_abs_diff(net, path, spec, background_bias=background_bias)
    logger.info("ONNX parity: max |ORT - torch| = %.2e (tolerance %.0e)", diff, PARITY_TOLERANCE)
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} > {PARITY_TOLERANCE}")
    manifest = Manifest(
        name=MODEL_NAME,
        version=version,
        file=MODEL_FILE,
        sha256=sha256_of(path),
        input=spec,
        labels=LABELS,
        training=training.model_copy(update={"background_bias": background_bias}),
        metrics={**metrics, "onnx_parity_max_abs_diff": diff},
    )
    write_manifest(manifest, out_dir)
    return manifest


def record_metrics(manifest: Manifest, out_dir: Path, metrics: dict[str, float]) -> Manifest:
    """Add measured ``metrics`` to the manifest of an exported model in ``out_dir``.

    The ONNX file is not touched: the numbers describe the very file that was measured.
    """
    updated = manifest.model_copy(update={"metrics": {**metrics, **manifest.metrics}})
    write_manifest(updated, out_dir)
    return updated
