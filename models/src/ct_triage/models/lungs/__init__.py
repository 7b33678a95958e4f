"""Classical lung segmentation (threshold + connected components) on a HU volume.

The lungs are found without a network so that every study gets lung masks, lung volumes and a
"does this series show lungs at all?" check, whatever the lesion model does:

1. work on a grid of about 2 mm (integer block mean of the HU);
2. *air* is ``HU < -380`` inside the body (largest 3-D tissue component, holes filled per
   slice), so the air around the patient and under the table is gone. Padding outside the
   reconstructed field of view is neither air nor tissue, and lung cut open by the field of
   view (a small reconstruction circle, a crop) is still inside the body: an air piece
   touching the field-of-view boundary that reads as parenchyma, not pure gas, and is
   wrapped in the body elsewhere is a pocket of the body (:mod:`.body`);
3. *gas*: bowel and stomach gas, the trachea and the main bronchi are pure air, whereas lung
   parenchyma (about -900..-700 HU) is interleaved with vessels and septa. Air whose 4 mm box
   mean is within 35 HU of the air level (measured on the air around the patient, since
   scanners read air anywhere from -1010 to -980 HU), in pieces of at least 0.2 mL, is
   removed together with a rim of half a box + 4 mm; in-plane pieces that mostly border the
   removed gas (colon wall, faeces) go too;
4. the remaining 3-D air components are kept when large enough (>= 2 mL and >= 8 % of the
   largest);
5. each component is given to the patient's right or left lung by its centroid against the
   mediastinum, the valley between the two lungs in the lung-column profile over the whole
   volume (:func:`.sides.mediastinum_x`; the body centre only when one lung is visible), so a
   field of view centred off the midline does not move lungs to the other side; a
   component straddling the mediastinum (lungs touching at the anterior junction) is split
   by eroding it until it falls apart and giving each voxel to the nearest core; a piece
   of lung cut off by the field of view is kept whatever its size;
6. each lung is closed (4 mm disk) and its holes filled slice by slice, so intrapulmonary
   vessels are included, as in reference masks such as TotalSegmentator's;
7. labels go back to the original grid by replication, with the boundary band re-decided on
   the full-resolution HU.

Dense lesions touching the pleura (consolidation, effusion-like opacities) are not air and are
not found here; :func:`ct_triage.models.postprocess.combine` adds them from the lesion model.

Labels follow :class:`~ct_triage.models.segmentation.LungLabel` (0 background, 1 right,
2 left); column 0 is the patient's right unless :attr:`Volume.direction` says the x axis
points to the patient's right, in which case sides are swapped.
"""

from ct_triage.models.lungs.body import field_of_view_boundary, outside_field_of_view
from ct_triage.models.lungs.grid import AIR_THRESHOLD_HU
from ct_triage.models.lungs.segment import (
    MIN_LUNG_ML,
    MIN_LUNG_SLICE_FRACTION,
    check_contains_lungs,
    segment_lungs,
)

__all__ = [
    "AIR_THRESHOLD_HU",
    "MIN_LUNG_ML",
    "MIN_LUNG_SLICE_FRACTION",
    "check_contains_lungs",
    "field_of_view_boundary",
    "outside_field_of_view",
    "segment_lungs",
]
