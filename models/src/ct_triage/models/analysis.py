"""The compute part of the flow: volume → lungs → lesions → postprocess.

Shared by ``analyze`` (through :mod:`ct_triage.server.pipeline`) and ``evaluate`` so that the
evaluation scores exactly the code path that produces clinical results.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ct_triage.models.lungs import check_contains_lungs, segment_lungs
from ct_triage.models.postprocess import combine
from ct_triage.models.segmentation import Segmentation
from ct_triage.models.volume import Volume


class LesionModel(Protocol):
    """What :func:`segment` needs from a lesion segmenter (see :mod:`ct_triage.models.lesions`)."""

    def __call__(self, volume: Volume, lungs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]: ...


def _no_timing(_name: str) -> AbstractContextManager[None]:
    return nullcontext()


def segment(
    volume: Volume,
    lesion_model: LesionModel,
    *,
    require_lungs: bool = True,
    stage: Callable[[str], AbstractContextManager[None]] = _no_timing,
) -> Segmentation:
    """Segment lungs (left/right) and lesions (GGO/consolidation) of a HU volume.

    Parameters
    ----------
    volume
        The HU volume.
    lesion_model
        Callable mapping ``(volume, lungs)`` to lesion classes on the volume grid.
    require_lungs
        Decline (:class:`~ct_triage.models.errors.StudyDeclined`) a volume that shows too
        little lung to be a chest CT. ``evaluate`` turns this off for 2-D slices.
    stage
        Context-manager factory wrapped around each step (``"lungs"``, ``"inference"``,
        ``"postprocess"``), e.g. :meth:`ct_triage.server.timing.StageTimer.stage`.
    """
    with stage("lungs"):
        lungs = segment_lungs(volume)
        if require_lungs:
            check_contains_lungs(volume, lungs)
    with stage("inference"):
        lesions = lesion_model(volume, lungs)
    with stage("postprocess"):
        return combine(volume, lungs, lesions)
