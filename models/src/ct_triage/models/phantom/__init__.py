"""A synthetic chest CT phantom with exact ground truth (pure numpy / scipy).

:func:`generate` builds a chest CT volume in Hounsfield units from a :class:`PhantomSpec`:
body contour with subcutaneous fat and muscle, ribs following an oblique rib pattern, spine,
sternum, mediastinum (heart with blood pool, aorta, pulmonary trunk, superior vena cava,
trachea and main bronchi, oesophagus), diaphragm domes with liver and spleen below, two
separate lungs whose shape varies along z (small apex, large base, cardiac notch on the
left), branching pulmonary vessels and airways grown into each lung, and COVID-19-like
lesions (ground-glass opacity and consolidation with air bronchograms). Partial-volume blur
and spatially correlated noise are applied last.

Conventions are those of ``../shared/data/README.md`` and :class:`~ct_triage.models.volume.Volume`:
``(z, y, x)`` arrays, z inferior to superior, row 0 anterior, column 0 the patient's right
(so the left lung has the higher column indices). The anatomy is laid out in physical mm
around the centre of the scan, over a thorax height drawn from the seed; a scan longer than
that height shows more neck and abdomen, a shorter one only the mid chest.

Ground truth (all exact, on the voxel grid):

* ``lung_labels`` / ``lung_mask``: the lung regions, intrapulmonary vessels, airways and
  lesions included (the definition of ``truth.npz``);
* ``lesion_class``: 1 ground-glass opacity (GGO), 2 consolidation; a voxel is a lesion voxel
  iff it lies in a generated lesion region *and* inside the lungs. Vessels crossing a GGO and
  air bronchograms inside a consolidation belong to the lesion, as a radiologist draws it.
* Outside the circular reconstruction field of view (inscribed circle of the matrix) the
  image holds exactly ``-1024`` (air); a correct DICOM reader maps the padding value there.

Determinism: every random draw comes from ``numpy.random.default_rng([seed, stream])``, so
the same spec gives identical bytes.
"""

from ct_triage.models.phantom.build import generate
from ct_triage.models.phantom.spec import (
    INVOLVEMENT_RANGES,
    SEVERITIES,
    Phantom,
    PhantomError,
    PhantomSpec,
    spec_from_seed,
)
from ct_triage.models.phantom.truth import percent_involvement, save_truth

__all__ = [
    "INVOLVEMENT_RANGES",
    "SEVERITIES",
    "Phantom",
    "PhantomError",
    "PhantomSpec",
    "generate",
    "percent_involvement",
    "save_truth",
    "spec_from_seed",
]
