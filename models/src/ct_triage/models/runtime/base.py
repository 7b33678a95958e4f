"""The Predictor protocol: what compute code needs from any inference runtime."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Predictor(Protocol):
    """Runs the segmentation network on a batch of preprocessed inputs.

    Implementations: ONNX Runtime (CPU / CUDA / TensorRT execution providers), Triton
    (tritonclient), torch (training-time only). Compute code depends on this protocol only.
    """

    @property
    def provider(self) -> str:
        """The execution provider actually in use (as reported by the runtime)."""
        ...

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map ``(N, C, H, W)`` float32 inputs to ``(N, K, H, W)`` float32 class probabilities."""
        ...
