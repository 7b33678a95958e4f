"""Segmentation and quantification metrics used to score the model (``ct-triage evaluate``).

Pure numpy; every function takes label maps of one shape and returns plain Python numbers.

Conventions
-----------
* **Dice** (Sørensen-Dice coefficient) of two binary masks ``T`` (truth) and ``P``
  (prediction) is ``2 |T ∩ P| / (|T| + |P|)``. When *both* masks are empty the prediction is
  perfect and the Dice is ``1.0``; when exactly one is empty it is ``0.0`` (which the formula
  gives anyway). This is the convention of most challenge scoring code (e.g. the Medical
  Segmentation Decathlon) and it makes the per-case mean well defined for healthy cases.
* **Class Dice** (ground-glass opacity, consolidation) is the Dice of ``labels == k`` in the
  truth and the prediction, with the same empty/empty rule.
* **Percent of lung involved** is the number of lesion voxels *inside* the lung divided by the
  number of lung voxels, times 100 (DESIGN.md "quantify"; the truth ``lung_mask`` covers the
  lesions). It is undefined (``None``) when the lung mask is empty. :func:`percent_of_lung`
  is the one place this ratio is computed: the report (:mod:`ct_triage.models.quantify`), the
  evaluation, the phantom truth and ``ct-triage demo`` all use it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["class_dice", "dice", "percent_involved", "percent_of_lung"]


def _check_same_shape(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")


def dice(truth: npt.NDArray[np.generic], prediction: npt.NDArray[np.generic]) -> float:
    """Dice coefficient of two masks (non-zero = foreground).

    Parameters
    ----------
    truth, prediction
        Arrays of the same shape; any non-zero voxel is foreground.

    Returns
    -------
    float
        ``2 |T ∩ P| / (|T| + |P|)`` in ``[0, 1]``; ``1.0`` when both masks are empty.

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    _check_same_shape(truth, prediction)
    t = truth != 0
    p = prediction != 0
    denominator = int(np.count_nonzero(t)) + int(np.count_nonzero(p))
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(t & p)) / denominator


def class_dice(
    truth_labels: npt.NDArray[np.generic], predicted_labels: npt.NDArray[np.generic], label: int
) -> float:
    """Dice of one class of two label maps: ``dice(truth == label, prediction == label)``.

    Parameters
    ----------
    truth_labels, predicted_labels
        Integer label maps of the same shape.
    label
        The class value to score (e.g. 1 for GGO, 2 for consolidation).

    Returns
    -------
    float
        The class Dice; ``1.0`` when neither map contains ``label``.
    """
    _check_same_shape(truth_labels, predicted_labels)
    return dice(truth_labels == label, predicted_labels == label)


def percent_involved(
    lesions: npt.NDArray[np.generic], lungs: npt.NDArray[np.generic]
) -> float | None:
    """Percentage of lung voxels that are lesion voxels.

    Parameters
    ----------
    lesions
        Lesion mask or label map (non-zero = lesion).
    lungs
        Lung mask or label map (non-zero = lung), lesions included.

    Returns
    -------
    float or None
        ``|lesions ∩ lungs| / |lungs| × 100`` in ``[0, 100]``; ``None`` when ``lungs`` is
        empty. Lesion voxels outside the lungs are ignored.
    """
    _check_same_shape(lesions, lungs)
    lung = lungs != 0
    n_lesion = int(np.count_nonzero((lesions != 0) & lung))
    return percent_of_lung(n_lesion, int(np.count_nonzero(lung)))


def percent_of_lung(lesion_voxels: int, lung_voxels: int) -> float | None:
    """Percent of lung involved from voxel counts: ``lesion_voxels / lung_voxels x 100``.

    Parameters
    ----------
    lesion_voxels
        Lesion voxels inside the lung (or lung part) considered.
    lung_voxels
        Voxels of that lung (or lung part), lesions included.

    Returns
    -------
    float or None
        The percentage; ``None`` when ``lung_voxels`` is 0 (undefined). The report writes
        ``0.0`` for a lung with no voxel (``percent_of_lung(...) or 0.0``).
    """
    if lung_voxels <= 0:
        return None
    return 100.0 * lesion_voxels / lung_voxels
