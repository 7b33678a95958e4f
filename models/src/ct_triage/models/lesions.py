"""Lesion segmentation (ground-glass opacity, consolidation) with the 2-D lesion network.

For each axial slice that contains lung: window the HU, crop the square box around the lungs
(one box for the whole volume, plus a margin that mimics a thorax crop), resample it to the
network grid, run the network in batches, resample the class probabilities back onto the
slice and take the arg-max. Predictions are *not* restricted to the lung mask here: dense
subpleural consolidation lies outside a classical lung mask, and
:func:`ct_triage.models.postprocess.combine` restricts lesions to a dilated lung region.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ct_triage.kernels.preprocess import Box, uncrop_argmax, window_crop_resize
from ct_triage.models.errors import InferenceError, ModelError
from ct_triage.models.identity import ModelIdentity
from ct_triage.models.manifest import (
    WEIGHTS_DIR,
    InputSpec,
    Manifest,
    load_manifest,
)
from ct_triage.models.preprocess import CropBox, lung_box
from ct_triage.models.runtime.base import Predictor
from ct_triage.models.runtime.factory import RuntimeConfig, create_predictor
from ct_triage.models.volume import Volume

logger = logging.getLogger(__name__)

PredictFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def _context_stack(
    windowed: npt.NDArray[np.float32], idx: int, channels: int
) -> npt.NDArray[np.float32]:
    """``channels`` adjacent slices centred on ``idx`` (edges repeated), shape ``(C, H, W)``."""
    half = channels // 2
    picks = np.clip(np.arange(idx - half, idx - half + channels), 0, windowed.shape[0] - 1)
    return windowed[picks]


def segment_slices(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    slice_indices: npt.NDArray[np.intp],
    box: CropBox,
    predict: PredictFn,
    spec: InputSpec,
    *,
    batch_size: int = 16,
    z_step: int = 1,
) -> npt.NDArray[np.uint8]:
    """Lesion labels for the chosen slices of a ``(z, y, x)`` HU array.

    Parameters
    ----------
    hu
        ``(z, y, x)`` Hounsfield units.
    slice_indices
        The z indices to segment (ascending); the others stay 0.
    box
        The in-plane crop box (source pixel units), the same for every slice.
    predict
        Maps ``(N, C, S, S)`` float32 inputs to ``(N, K, S, S)`` probabilities
        (e.g. :meth:`OnnxPredictor.predict`, or a torch model during validation).
    spec
        The manifest's input description (window, size, channels).
    batch_size
        Slices per network call.
    z_step
        Run the network on every ``z_step``-th of the chosen slices (always the first and the
        last) and interpolate the class probabilities linearly in z for the slices between;
        1 runs every slice.

    Returns
    -------
    numpy.ndarray
        ``uint8`` ``(z, y, x)`` class labels.
    """
    if spec.height != spec.width:
        raise ModelError(
            f"only square network inputs are supported, got {spec.height}x{spec.width}"
        )
    if z_step < 1:
        raise ValueError(f"z_step must be >= 1, got {z_step}")
    z, h, w = hu.shape
    labels = np.zeros((z, h, w), dtype=np.uint8)
    if slice_indices.size == 0:
        return labels
    lo, hi = spec.hu_window
    size = spec.height
    half = spec.channels // 2
    run = network_slices(slice_indices, z_step)
    needed = np.unique(
        np.clip(
            (run[:, None] + np.arange(-half, spec.channels - half)[None, :]).ravel(),
            0,
            z - 1,
        )
    )
    # Window and crop only the slices the network will see (plus their context).
    grid = np.zeros((z, size, size), dtype=np.float32)
    kbox = Box(box.y0, box.x0, box.height, box.width)
    # Fused window + crop-resize kernel (equal to preprocess.crop_resize(window(...)) within
    # float32 rounding; tests/unit/test_kernels.py), about 10x faster on 512x512 slices.
    src = _as_index(needed)  # usually consecutive: a view, no gather copy
    grid[src] = window_crop_resize(hu[src], kbox, size, lo, hi)

    def network(chunk: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        batch = np.stack([_context_stack(grid, int(i), spec.channels) for i in chunk])
        probs = predict(batch)
        if probs.ndim != 4 or probs.shape[0] != chunk.size or probs.shape[2:] != (size, size):
            raise InferenceError(
                f"network returned shape {probs.shape} for an input batch of {batch.shape}"
            )
        return np.asarray(probs, dtype=np.float32)

    def put(chunk: npt.NDArray[np.intp], probs: npt.NDArray[np.float32]) -> None:
        classes, (ys, xs) = uncrop_argmax(probs, kbox, (h, w))
        labels[_as_index(chunk), ys, xs] = classes

    if run.size == slice_indices.size:
        for start in range(0, slice_indices.size, batch_size):
            chunk = slice_indices[start : start + batch_size]
            put(chunk, network(chunk))
        return labels
    computed = np.concatenate(
        [network(run[start : start + batch_size]) for start in range(0, run.size, batch_size)]
    )
    # the computed slices are written as they are; each chosen slice between two computed
    # ones gets their z-weighted mean (in place: no temporaries beyond the two gathers)
    for start in range(0, run.size, batch_size):
        put(run[start : start + batch_size], computed[start : start + batch_size])
    between = slice_indices[~np.isin(slice_indices, run)]
    right = np.searchsorted(run, between, side="left")  # run[right - 1] < between < run[right]
    left = right - 1
    weight = ((between - run[left]) / (run[right] - run[left])).astype(np.float32)
    for start in range(0, between.size, batch_size):
        sl = slice(start, start + batch_size)
        wgt = weight[sl, None, None, None]
        probs = computed[left[sl]]
        probs *= np.float32(1.0) - wgt
        upper = computed[right[sl]]
        upper *= wgt
        probs += upper
        put(between[sl], probs)
    return labels


def segment_volume(
    volume: Volume,
    lungs: npt.NDArray[np.integer],
    predict: PredictFn,
    spec: InputSpec,
    *,
    batch_size: int = 16,
    z_step_mm: float = 0.0,
) -> tuple[npt.NDArray[np.uint8], int]:
    """Lesion classes of a volume: the inference path shared by the segmenter and training.

    The crop box is the lung bounding box of the whole volume plus ``spec.crop_margin_mm``;
    only slices that contain lung (``lungs > 0``) are segmented. With ``z_step_mm`` > 0 the
    network runs on every k-th of them, ``k = floor(z_step_mm / slice spacing)`` (so slices
    ``z_step_mm`` or thicker all run), and the class probabilities of the slices between are
    interpolated linearly in z (see :func:`segment_slices`).

    Parameters
    ----------
    volume
        The HU volume.
    lungs
        Lung labels on the volume grid (any non-zero value is lung).
    predict
        Maps ``(N, C, S, S)`` inputs to ``(N, K, S, S)`` probabilities.
    spec
        The manifest's input description.
    batch_size
        Slices per network call.
    z_step_mm
        Spacing in z at which the network runs on thin-slice series; 0 runs every slice.

    Returns
    -------
    (numpy.ndarray, int)
        ``uint8`` ``(z, y, x)`` classes (0 none, 1 GGO, 2 consolidation) and the number of
        slices the network ran on.
    """
    spacing_yx = (float(volume.spacing[1]), float(volume.spacing[2]))
    box = lung_box(lungs, spacing_yx, margin_mm=spec.crop_margin_mm)
    if box is None:
        logger.info("no lung in the volume: no lesion segmentation run")
        return np.zeros(volume.shape, dtype=np.uint8), 0
    slices = np.flatnonzero(lungs.any(axis=(1, 2))).astype(np.intp)
    z_step = z_step_for(float(volume.spacing[0]), z_step_mm)
    labels = segment_slices(
        volume.hu, slices, box, predict, spec, batch_size=batch_size, z_step=z_step
    )
    return labels, int(network_slices(slices, z_step).size)


def network_slices(slice_indices: npt.NDArray[np.intp], z_step: int) -> npt.NDArray[np.intp]:
    """The slices the network runs on: every ``z_step``-th, always the first and the last."""
    run = slice_indices[::z_step]
    if run.size and run[-1] != slice_indices[-1]:
        run = np.append(run, slice_indices[-1])
    return run


def _as_index(idx: npt.NDArray[np.intp]) -> slice | npt.NDArray[np.intp]:
    """A slice for ascending consecutive indices (a view, no gather or scatter), else ``idx``."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def z_step_for(slice_spacing_mm: float, z_step_mm: float) -> int:
    """How many slices apart the network runs for ``z_step_mm`` (at least 1)."""
    if z_step_mm <= 0 or not slice_spacing_mm > 0:
        return 1
    return max(1, math.floor(z_step_mm / slice_spacing_mm + 1e-6))


class LesionSegmenter:
    """Segments ground-glass opacity (1) and consolidation (2) on a CT volume.

    Parameters
    ----------
    predictor
        The runtime that runs the network (ONNX Runtime, Triton, ...).
    manifest
        The model's validated manifest.
    identity
        Name, version, SHA-256 of the loaded file and the provider actually used.
    batch_size
        Slices per network call.
    z_step_mm
        On series thinner than this, the network runs about every ``z_step_mm`` and the
        slices between get interpolated class probabilities; 0 runs every slice.
    """

    def __init__(
        self,
        predictor: Predictor,
        manifest: Manifest,
        identity: ModelIdentity,
        *,
        batch_size: int = 16,
        z_step_mm: float = 0.0,
    ) -> None:
        self.predictor = predictor
        self.manifest = manifest
        self.identity = identity
        self.batch_size = batch_size
        self.z_step_mm = z_step_mm

    def __call__(self, volume: Volume, lungs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Lesion classes on the volume grid: 0 none, 1 ground-glass opacity, 2 consolidation.

        Only slices that contain lung (``lungs > 0``) are run; the crop box is the lung
        bounding box of the whole volume plus the manifest's ``crop_margin_mm``.

        Raises
        ------
        InferenceError
            ``lungs`` does not match the volume, or the runtime fails.
        """
        if lungs.shape != volume.shape:
            raise InferenceError(
                f"lung mask shape {lungs.shape} does not match the volume {volume.shape}"
            )
        t0 = time.perf_counter()
        labels, n_run = segment_volume(
            volume,
            lungs,
            self.predictor.predict,
            self.manifest.input,
            batch_size=self.batch_size,
            z_step_mm=self.z_step_mm,
        )
        if n_run:
            logger.info(
                "lesion network ran on %d of %d slices in %.2f s (%s)",
                n_run,
                volume.shape[0],
                time.perf_counter() - t0,
                self.identity.provider,
            )
        return labels


def load_lesion_segmenter(config: RuntimeConfig) -> LesionSegmenter:
    """Load the lesion model of ``config`` and the runtime that runs it.

    Parameters
    ----------
    config
        The model directory (``None``: the shipped weights; ``manifest.json`` and the ONNX
        file), the runtime (ONNX Runtime provider and options, FP16, TensorRT engine cache, IO
        binding, or a Triton server), the batch and the z step; the segmenter is complete when
        returned, nothing is set on it afterwards.

    Raises
    ------
    ModelError
        Manifest missing or invalid, model file missing or not matching its SHA-256, or the
        model's input shape disagrees with the manifest.
    RuntimeUnavailable
        The runtime cannot run here (``strict``: the requested provider is unusable).
    """
    directory = WEIGHTS_DIR if config.model_dir is None else Path(config.model_dir)
    manifest = load_manifest(directory)
    predictor = create_predictor(config, directory)
    identity = ModelIdentity(
        name=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256,
        provider=predictor.provider,
    )
    logger.info("lesion model %s on %s", identity.algorithm_label, identity.provider)
    return LesionSegmenter(
        predictor,
        manifest,
        identity,
        batch_size=config.max_batch,
        z_step_mm=config.z_step_mm,
    )
