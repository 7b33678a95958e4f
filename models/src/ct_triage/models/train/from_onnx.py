"""Recover trainable torch weights from a shipped ONNX lesion model (to fine-tune it).

``python -m ct_triage.models.train.from_onnx [--model DIR] OUT.pt`` reads ``DIR/lesion_seg.onnx``
(default: the shipped model), whose export folded most batch norms into the preceding
convolutions, and writes a ``state_dict`` of :func:`ct_triage.models.nets.build_lesion_net`
that computes the same logits: every convolution, transposed convolution and PReLU takes the
ONNX weights of the node whose output name carries its module path; a batch norm that was
folded becomes the identity (weight 1, bias 0, mean 0, variance ``1 - eps``), one kept as a
node takes its four tensors. The exported head's background-logit bias is not part of the
network (it is re-applied at export); parity with the ONNX file is checked before writing.

Fine-tune such weights with ``freeze_bn`` (the config field): a folded batch norm must stay
the identity, which it would not in training mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper

from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest
from ct_triage.models.nets import LesionNetConfig, build_lesion_net

logger = logging.getLogger(__name__)

_PARITY_TOLERANCE = 1e-3


def _module_path(output_name: str) -> str:
    """``/net/model/model.0/conv/unit0/conv/Conv_output_0`` -> ``model.0.conv.unit0.conv``.

    The exporter names each scope by its attribute, and an indexed child as ``parent.k``
    after its parent's own segment (``model/model.1/submodule/submodule.0``).
    """
    parts = output_name.strip("/").split("/")[:-1]
    if parts and parts[0] == "net":
        parts = parts[1:]
    path: list[str] = []
    for part in parts:
        head, _, index = part.rpartition(".")
        if path and index.isdigit() and head == path[-1]:
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def recover_state(onnx_path: Path, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of ``net`` filled from the ONNX file (see the module docstring)."""
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    filled: set[str] = set()

    def put(key: str, value: npt.NDArray[np.generic]) -> None:
        if key not in state:
            raise KeyError(f"ONNX tensor for {key} has no place in the network")
        target = state[key]
        tensor = torch.from_numpy(np.array(value, dtype=np.float32)).reshape(target.shape)
        state[key] = tensor.to(target.dtype)
        filled.add(key)

    for node in graph.node:
        path = _module_path(node.output[0])
        weights = [inits[i] for i in node.input if i in inits]
        if node.op_type in ("Conv", "ConvTranspose"):
            put(f"{path}.weight", weights[0])
            if len(weights) > 1:
                put(f"{path}.bias", weights[1])
        elif node.op_type == "PRelu":
            put(f"{path}.weight", weights[0])
        elif node.op_type == "BatchNormalization":
            for name, value in zip(
                ("weight", "bias", "running_mean", "running_var"), weights, strict=True
            ):
                put(f"{path}.{name}", value)
    for key in state:
        if key.endswith("running_var") and key not in filled:
            base = key.removesuffix(".running_var")
            eps = 1e-5
            module = dict(net.named_modules())[base]
            eps = float(getattr(module, "eps", eps))
            state[f"{base}.weight"] = torch.ones_like(state[f"{base}.weight"])
            state[f"{base}.bias"] = torch.zeros_like(state[f"{base}.bias"])
            state[f"{base}.running_mean"] = torch.zeros_like(state[key])
            state[key] = torch.full_like(state[key], 1.0 - eps)
            filled.update({f"{base}.weight", f"{base}.bias", f"{base}.running_mean", key})
    missing = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"no ONNX weights for {missing[:5]} (and {max(0, len(missing) - 5)} more)")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ct_triage.models.train.from_onnx")
    parser.add_argument("out", type=Path, help="checkpoint.pt to write")
    parser.add_argument("--model", type=Path, default=WEIGHTS_DIR, help="model dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = load_manifest(args.model)
    net = build_lesion_net(LesionNetConfig())  # the architecture of every shipped model
    net.load_state_dict(recover_state(args.model / manifest.file, net))
    net.eval()
    # parity: the torch logits with the exported head's bias against the ONNX probabilities
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    spec = manifest.input
    x = rng.random((2, spec.channels, spec.height, spec.width), dtype=np.float32)
    session = ort.InferenceSession(
        str(args.model / manifest.file), providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    bias = float(manifest.training.background_bias or 0.0)
    logits[:, 0] -= bias
    got = torch.softmax(logits, dim=1).numpy()
    diff = float(np.abs(got - expected).max())
    logger.info("parity with %s: max |torch - onnx| = %.2e", manifest.file, diff)
    if diff > _PARITY_TOLERANCE:
        print(f"from_onnx: parity failed ({diff:.2e} > {_PARITY_TOLERANCE:g})", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    print(f"{args.out}: weights of {manifest.name} {manifest.version} (parity {diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
