"""Result writers: the DICOM objects (and preview) that carry an analysis back to PACS.

* :mod:`~ct_triage.dicom_bridge.writers.seg` -- DICOM Segmentation (PS3.3 A.51), four
  BINARY segments (right lung, left lung, ground-glass opacity, consolidation).
* :mod:`~ct_triage.dicom_bridge.writers.sr` -- Comprehensive 3D SR with a TID 1500
  Measurement Report referencing the SEG segments and outlining the largest lesion section
  of each lung; a second SR with only those outlines (the form OHIF lists); the "not
  analysed: REASON" SR of a declined study. :func:`~.sr.round_measurement` is the one
  rounding rule shared with ``report.json``.
* :mod:`~ct_triage.dicom_bridge.writers.sr_content` -- the TID 1500 pieces the SR writers
  share (request, observer, algorithm, disclaimer); :mod:`~.sr_outlines` -- the outline SR.
* :mod:`~ct_triage.dicom_bridge.writers.planar` -- the largest lesion cross-sections and
  their outlines (image coordinates).
* :mod:`~ct_triage.dicom_bridge.writers.overlay` -- burned-in Secondary Capture series
  (PS3.3 A.8.1) and the preview PNG.
* :mod:`~ct_triage.dicom_bridge.writers.summary` -- the one-page summary Secondary Capture
  (key images, the numbers, the model, the disclaimer) any PACS viewer shows, and the page
  of a study that was not analysed.
* :mod:`~ct_triage.dicom_bridge.writers.codes` -- every coded concept used, with sources
  (standard codes only).

Each writer takes one frozen request object, validated on construction, and returns
``pydicom`` datasets ready for ``dcmwrite(..., enforce_file_format=True)``. Every object
states that it is AI output, not for primary diagnosis, and names the model version.
Submodules are imported explicitly (importing this package does not import highdicom).
"""
