"""The baseline: the same study analysed the way MONAI Deploy App SDK apps do it.

What a typical MONAI Deploy segmentation app does, without its operator boilerplate:

1. **load** — a pydicom loop over the series' files, sorted by ImagePositionPatient, with
   ``pixel_array * RescaleSlope + RescaleIntercept`` into a float32 volume (the SDK's
   ``DICOMSeriesToVolumeOperator``);
2. **pre** — MONAI dictionary transforms: ``EnsureChannelFirstd``, ``Orientationd`` (RAS),
   ``Spacingd`` (1.5 x 1.5 mm in plane, slice spacing kept: the network is 2-D),
   ``ScaleIntensityRanged`` (the model's HU window to ``[0, 1]``, clipped);
3. **inference** — :func:`monai.inferers.sliding_window_inference` in PyTorch eager mode,
   ``(224, 224, 1)`` windows (one axial slice per window), MONAI's default overlap 0.25,
   with the **same weights** as our ONNX model (see :func:`torch_net_from_onnx`);
4. **post** — ``AsDiscreted`` (arg-max) and ``Invertd`` back to the source grid (nearest);
5. **write_seg** — :class:`highdicom.seg.Segmentation` with default options, one segment per
   lesion class (the SDK's ``DICOMSegmentationWriterOperator``).

There is no lung segmentation, quantification, SR or overlay here: the baseline is what a
MONAI Deploy app gives for the same model, and it already does less work than our pipeline.

Weights: the training checkpoint is not shipped and ``onnx2torch`` needs torchvision (not in
this environment), so the shipped ONNX initialisers are copied into the same architecture
(:func:`ct_triage.models.nets.unet2d.build_lesion_net`, MONAI's ``UNet``) with
``onnx.numpy_helper``. Where ONNX export folded a batch norm into its convolution, the torch
batch norm is set to identity. :func:`torch_net_from_onnx` checks the conversion against ONNX
Runtime (maximum absolute difference of the probabilities) before it is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: In-plane target spacing of the baseline's ``Spacingd`` (mm).
BASELINE_PIXEL_SPACING_MM = 1.5
#: MONAI's default sliding-window overlap.
BASELINE_OVERLAP = 0.25


def _module_name(onnx_output: str) -> str:
    """Torch module name from an ONNX node output name.

    ``/net/model/model.1/submodule/submodule.0/conv/unit0/conv/Conv_output_0`` names the
    module ``net.model.1.submodule.0.conv.unit0.conv`` (torch.onnx scopes repeat the parent
    name: keep what follows the last dot of each scope).
    """
    scopes = onnx_output.strip("/").split("/")[:-1]
    return ".".join(s.rsplit(".", 1)[-1] for s in scopes)


def torch_net_from_onnx(onnx_path: Path, device: str = "cpu") -> tuple[Any, float]:
    """Rebuild the lesion network in PyTorch with the weights of the shipped ONNX file.

    Parameters
    ----------
    onnx_path
        The shipped ``lesion_seg.onnx``.
    device
        Torch device (``"cpu"`` or ``"cuda"``).

    Returns
    -------
    (torch.nn.Module, float)
        The network in eval mode (outputs class probabilities) and the maximum absolute
        difference of its probabilities from ONNX Runtime's on a random input.
    """
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    from ct_triage.models.nets.unet2d import LesionNetConfig, SoftmaxHead, build_lesion_net

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # The background calibration is a constant Sub before the Softmax (see nets.unet2d).
    bias = 0.0
    for node in model.graph.node:
        if node.op_type == "Sub" and node.input[1] in inits:
            bias = float(inits[node.input[1]].reshape(-1)[0])
    net = SoftmaxHead(build_lesion_net(LesionNetConfig(dropout=0.0)), bias)
    modules = dict(net.named_modules())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    folded: set[str] = set()
    kept_bn: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in {"Conv", "ConvTranspose", "PRelu", "BatchNormalization"}:
            continue
        name = _module_name(node.output[0])
        if name not in modules:
            raise RuntimeError(f"ONNX node {node.output[0]} has no module {name} in the net")
        fields = {
            "Conv": ("weight", "bias"),
            "ConvTranspose": ("weight", "bias"),
            "PRelu": ("weight",),
            "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
        }[node.op_type]
        for field, src in zip(fields, node.input[1:], strict=False):
            key = f"{name}.{field}"
            state[key] = torch.from_numpy(inits[src].copy()).reshape(state[key].shape)
        if node.op_type == "BatchNormalization":
            kept_bn.add(name)
        if node.op_type == "Conv" and name.endswith(".conv"):
            folded.add(name[: -len(".conv")] + ".adn.N")
    for bn in folded - kept_bn:  # batch norm folded into the convolution by the export: identity
        if f"{bn}.weight" not in state:
            continue
        eps = float(modules[bn].eps)
        state[f"{bn}.weight"] = torch.ones_like(state[f"{bn}.weight"])
        state[f"{bn}.bias"] = torch.zeros_like(state[f"{bn}.bias"])
        state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.running_mean"])
        state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.running_var"], 1.0 - eps)
    net.load_state_dict(state)
    net.eval().to(device)

    x = np.random.default_rng(0).random((2, 1, 224, 224), dtype=np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        got = net(torch.from_numpy(x).to(device)).float().cpu().numpy()
    return net, float(np.abs(got - ref).max())


def load_series_pydicom(paths: Sequence[Path]) -> tuple[npt.NDArray[np.float32], Any, list[Any]]:
    """The SDK-style series loader: read every file, sort by position, rescale.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, list of pydicom.Dataset)
        ``(x, y, z)`` float32 HU volume, its 4x4 RAS affine, and the sorted datasets.
    """
    import pydicom

    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    slices = [
        d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1.0))
        + float(getattr(d, "RescaleIntercept", 0.0))
        for d in datasets
    ]
    vol = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, cols, z) -> (x, y, z)
    first = datasets[0]
    dy, dx = (float(v) for v in first.PixelSpacing)
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    dz = (z[-1] - z[0]) / max(1, len(z) - 1)
    ox, oy, oz = (float(v) for v in first.ImagePositionPatient)
    # LPS -> RAS: flip x and y
    affine = np.array(
        [[-dx, 0, 0, -ox], [0, -dy, 0, -oy], [0, 0, dz, oz], [0, 0, 0, 1]], dtype=np.float64
    )
    return np.ascontiguousarray(vol, dtype=np.float32), affine, datasets


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


class MonaiBaseline:
    """Load once, run many: the baseline app with its network resident (as the SDK does).

    Parameters
    ----------
    onnx_path
        The shipped ONNX model (weights copied into torch).
    hu_window
        The model's HU window (``ScaleIntensityRanged``).
    device
        ``"cuda"`` when available, else ``"cpu"``.
    sw_batch_size
        Windows per network call.
    """

    def __init__(
        self,
        onnx_path: Path,
        hu_window: tuple[float, float],
        *,
        device: str | None = None,
        sw_batch_size: int = 16,
    ) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net, self.parity = torch_net_from_onnx(onnx_path, self.device)
        self.hu_window = hu_window
        self.sw_batch_size = sw_batch_size

    @property
    def provider(self) -> str:
        """The torch device, named like an execution provider."""
        return f"torch-eager-{self.device}"

    def run(self, paths: Sequence[Path], out_file: Path) -> dict[str, float]:
        """Analyse one series (its files) and write ``out_file`` (DICOM SEG).

        Returns
        -------
        dict
            Seconds per stage (``load``, ``pre``, ``inference``, ``post``, ``write_seg``)
            and ``total``.
        """
        import highdicom as hd
        import torch
        from monai.data.meta_tensor import MetaTensor
        from monai.inferers.utils import sliding_window_inference
        from monai.transforms.compose import Compose
        from monai.transforms.intensity.dictionary import ScaleIntensityRanged
        from monai.transforms.post.dictionary import AsDiscreted, Invertd
        from monai.transforms.spatial.dictionary import Orientationd, Spacingd
        from monai.transforms.utility.dictionary import EnsureChannelFirstd
        from pydicom.sr.codedict import codes

        t: dict[str, float] = {}
        t_start = time.perf_counter()
        with _stage(t, "load"):
            vol, affine, datasets = load_series_pydicom(paths)
        dz = float(affine[2, 2])
        lo, hi = self.hu_window
        pre = Compose(
            [
                EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
                Orientationd(keys="image", axcodes="RAS"),
                Spacingd(
                    keys="image",
                    pixdim=(BASELINE_PIXEL_SPACING_MM, BASELINE_PIXEL_SPACING_MM, dz),
                    mode="bilinear",
                ),
                ScaleIntensityRanged(
                    keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True
                ),
            ]
        )
        with _stage(t, "pre"):
            data = pre({"image": MetaTensor(torch.from_numpy(vol), affine=affine)})
        net = self.net

        def predictor(x: Any) -> Any:  # (N, 1, 224, 224, 1) windows -> 2-D net -> back
            return net(x[..., 0])[..., None]

        with _stage(t, "inference"), torch.inference_mode():
            img = data["image"].unsqueeze(0).to(self.device)
            pred = sliding_window_inference(
                img,
                roi_size=(224, 224, 1),
                sw_batch_size=self.sw_batch_size,
                predictor=predictor,
                overlap=BASELINE_OVERLAP,
            )
            data["pred"] = pred[0].cpu()
        post = Compose(
            [
                AsDiscreted(keys="pred", argmax=True),
                Invertd(
                    keys="pred",
                    transform=pre,
                    orig_keys="image",
                    nearest_interp=True,
                    to_tensor=True,
                ),
            ]
        )
        with _stage(t, "post"):
            data = post(data)
            labels = np.asarray(data["pred"][0]).astype(np.uint8)  # (x, y, z)
            labels = labels.transpose(2, 1, 0)  # (z, rows, cols), slices as sorted
        with _stage(t, "write_seg"):
            algo = hd.AlgorithmIdentificationSequence(
                name="lesion-unet2d",
                version="baseline",
                family=codes.cid7162.ArtificialIntelligence,
            )
            segs = [
                hd.seg.SegmentDescription(
                    segment_number=i,
                    segment_label=label,
                    segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                    segmented_property_type=codes.SCT.Lesion,
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                    algorithm_identification=algo,
                )
                for i, label in ((1, "GGO"), (2, "Consolidation"))
            ]
            mask = np.stack([labels == 1, labels == 2], axis=-1)
            seg = hd.seg.Segmentation(
                source_images=datasets,
                pixel_array=mask,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segs,
                series_instance_uid=hd.UID(),
                series_number=900,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="MONAI Deploy style baseline",
                manufacturer_model_name="baseline",
                software_versions="0",
                device_serial_number="0",
            )
            seg.save_as(out_file)
        t["total"] = time.perf_counter() - t_start
        return t


def run_baseline(
    paths: Sequence[Path],
    out_dir: Path,
    repeats: int,
    onnx_path: Path,
    hu_window: tuple[float, float],
    progress: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Run the baseline ``repeats`` times on one series; timings per repeat."""
    app = MonaiBaseline(onnx_path, hu_window)
    progress(f"baseline: torch net parity vs ONNX Runtime, max |dp| = {app.parity:.2e}")
    runs = []
    for r in range(repeats):
        runs.append(app.run(paths, out_dir / f"baseline_seg_{r}.dcm"))
        progress(f"baseline run {r + 1}/{repeats}: {runs[-1]['total']:.2f} s")
    return {"runs": runs, "provider": app.provider, "onnx_parity_max_abs": app.parity}
