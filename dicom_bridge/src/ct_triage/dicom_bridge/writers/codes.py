"""Coded concepts used by the result writers (PS3.16, SNOMED CT, LOINC, UCUM, private).

Every concept the SEG, SR and secondary-capture writers emit is defined here, once, with
its source, so the objects agree with each other and with ``report.json``.

Sources
-------
* Standard DICOM / SNOMED CT / LOINC concepts are taken from pydicom's copy of the PS3.16
  code dictionaries (``pydicom.sr.codedict.codes``) where they exist there:
  ``SCT 39607008`` Lung, ``SCT 91723000`` Anatomical Structure (CID 7150),
  ``SCT 49755003`` Morphologically Abnormal Structure (CID 7150), ``DCM 112120`` Ground
  glass opacity (CID 6102 / CID 6104), ``SCT 118565006`` Volume, ``SCT 281392002`` /
  ``281393007`` / ``281394001`` upper / middle / lower zone of lung (CID 6124),
  ``SCT 24028007`` Right / ``SCT 7771000`` Left (CID 244 laterality), ``DCM 121106``
  Comment, ``DCM 126000`` Imaging Measurement Report (CID 7021).
* Not in PS3.16 dictionaries, checked against SNOMED CT browsers (International edition):
  ``SCT 3341006`` "Right lung" (Right lung structure, body structure) and
  ``SCT 44029006`` "Left lung" (Left lung structure, body structure); ``SCT 95436008``
  "Lung consolidation" (disorder; OMOP concept 4318404). PS3.16 has no morphology concept
  for consolidation (CID 6102 / 6104 list ground glass opacity but not consolidation), so the
  SNOMED CT finding is the closest standard concept.
* ``LN 24627-2`` "CT Chest" (LOINC; pydicom lists it in CID 7000) is the procedure
  reported.
* ``UMLS C0034375`` "Qualitative Evaluations" is the TID 1500 row 12 container.
* Concepts with no standard code (percent of a lung involved, severity score, triage
  category and its values) use the private coding scheme :data:`PRIVATE_SCHEME`
  ``99CTTRIAGE``, declared in the SR's Coding Scheme Identification Sequence
  (PS3.3 C.12.1.1.2; PS3.16 section 8 "Private coding schemes": designators begin ``99``).
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ct_triage.models.identity import PRODUCT_NAME, PRODUCT_VERSION
from ct_triage.models.quantify import TriageCategory

#: Private coding scheme designator (PS3.16 section 8: private designators begin "99").
PRIVATE_SCHEME = "99CTTRIAGE"
#: Human-readable name of :data:`PRIVATE_SCHEME` (Coding Scheme Name, LO).
PRIVATE_SCHEME_NAME = "chest-ct-triage private codes"

# --- Segmented property categories (CID 7150) ---------------------------------------------
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")

# --- Segmented property types ---------------------------------------------------------------
LUNG = Code("39607008", "SCT", "Lung")
RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
LEFT_LUNG = Code("44029006", "SCT", "Left lung")
GROUND_GLASS_OPACITY = Code("112120", "DCM", "Ground glass opacity")
CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")

# --- Laterality and zones (CID 244, CID 6124) ------------------------------------------------
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
ZONES: dict[str, Code] = {
    "upper": Code("281392002", "SCT", "Upper zone of lung"),
    "middle": Code("281393007", "SCT", "Middle zone of lung"),
    "lower": Code("281394001", "SCT", "Lower zone of lung"),
}

# --- Measurement concept names and units -----------------------------------------------------
VOLUME = Code("118565006", "SCT", "Volume")
PERCENT_INVOLVEMENT = Code("CTT0001", PRIVATE_SCHEME, "Percent of lung involved by lesion")
SEVERITY_SCORE = Code("CTT0002", PRIVATE_SCHEME, "CT severity score (5 regions, 0-25)")
TRIAGE_CATEGORY = Code("CTT0003", PRIVATE_SCHEME, "Triage category")
LESION_VOLUME = Code("CTT0004", PRIVATE_SCHEME, "Total lesion volume")
LUNG_ASSESSMENT = Code("CTT0005", PRIVATE_SCHEME, "Whole lung assessment")

UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_SCORE = Code("{score}", "UCUM", "score")

#: Triage category values (coded, private scheme).
TRIAGE_VALUES: dict[TriageCategory, Code] = {
    TriageCategory.NORMAL: Code("CTT0010", PRIVATE_SCHEME, "Normal - no lesion detected"),
    TriageCategory.MILD: Code("CTT0011", PRIVATE_SCHEME, "Mild involvement"),
    TriageCategory.MODERATE: Code("CTT0012", PRIVATE_SCHEME, "Moderate involvement"),
    TriageCategory.SEVERE: Code("CTT0013", PRIVATE_SCHEME, "Severe involvement"),
    TriageCategory.INDETERMINATE: Code(
        "CTT0014", PRIVATE_SCHEME, "Indeterminate - lung segmentation unreliable, needs a human"
    ),
}

#: Quality gate (:mod:`ct_triage.models.quality`): a coded evaluation of the lung masks.
SEGMENTATION_QUALITY = Code("CTT0006", PRIVATE_SCHEME, "Lung segmentation quality")
SEGMENTATION_RELIABLE = Code("CTT0020", PRIVATE_SCHEME, "Lung segmentation passed quality checks")
SEGMENTATION_UNRELIABLE = Code("CTT0021", PRIVATE_SCHEME, "Lung segmentation unreliable")

# --- Document, procedure, context -----------------------------------------------------------
IMAGING_MEASUREMENT_REPORT: Code = codes.DCM.ImagingMeasurementReport
CT_CHEST = Code("24627-2", "LN", "CT Chest")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT: Code = codes.DCM.Comment
#: Algorithm family of the Segment Algorithm Identification (CID 7162).
ARTIFICIAL_INTELLIGENCE: Code = codes.DCM.ArtificialIntelligence

#: Product line used as Manufacturer / ManufacturerModelName / SoftwareVersions.
MANUFACTURER = PRODUCT_NAME
SOFTWARE_VERSION = PRODUCT_VERSION


def private_coding_scheme_item() -> Dataset:
    """One Coding Scheme Identification Sequence item for :data:`PRIVATE_SCHEME`.

    Returns
    -------
    pydicom.dataset.Dataset
        Item with Coding Scheme Designator, Name, Version and Responsible Organization
        (PS3.3 C.12.1.1.2, Table C.12-1).
    """
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = SOFTWARE_VERSION
    item.CodingSchemeResponsibleOrganization = PRODUCT_NAME
    return item
