"""Scoring the model on a folder of ``.npz`` cases (``ct-triage evaluate DATA --json OUT.json``).

The input format is the one of ``../shared/data/README.md``: each ``*.npz`` file directly in
``DATA`` holds ``image`` (HU, 2-D ``(y, x)`` or 3-D ``(z, y, x)``), ``spacing`` (mm, same axis
order, ``NaN`` = unknown) and any of the truths ``lesion_mask`` (0/1), ``lesion_class``
(0 background, 1 ground-glass opacity, 2 consolidation) and ``lung_mask`` (0/1, covering the
lesions).

Every case runs through the same compute path as ``analyze``
(:func:`ct_triage.models.analysis.segment`, with ``require_lungs=False`` so that 2-D slices and
partial volumes are scored rather than declined). A 2-D slice is scored as a one-slice volume
``(1, y, x)``. Unknown spacing is replaced by :data:`NOMINAL_SPACING_MM` for the model and
recorded as ``spacing_known: false``; millilitre figures are then not reported (nor for 2-D
slices, whose thickness is unknown), while percentages, being ratios, still are.

Per-case metrics (see :mod:`ct_triage.models.metrics` for the Dice convention: 1.0 when truth
and prediction are both empty, 0.0 when exactly one is):

* ``lesion_dice``: predicted ``lesions > 0`` vs truth ``lesion_mask > 0 or lesion_class > 0``;
  computed when the case has ``lesion_mask`` or ``lesion_class``;
* ``ggo_dice`` / ``consolidation_dice``: predicted class map vs ``lesion_class``, class 1 / 2;
  computed for every case that has ``lesion_class`` (a case with neither truth nor prediction
  of the class scores 1.0);
* ``lung_dice``: predicted ``lungs > 0`` vs ``lung_mask``; computed when the case has
  ``lung_mask``;
* ``pred_percent_involvement`` (always, when the prediction has lung) and
  ``true_percent_involvement`` (when the case has ``lung_mask`` *and* a lesion truth): lesion
  voxels inside the lung / lung voxels x 100; ``poi_abs_error_pp`` is their absolute
  difference in percentage points, when both are defined.

The summary holds the mean over cases of each metric and the number of cases it averaged;
a metric no case allows is ``null`` with a count of 0.

Modules: :mod:`.cases` reads and validates the cases, :mod:`.scoring` runs the model and
scores it, :mod:`.output` writes the JSON and the table.
"""
