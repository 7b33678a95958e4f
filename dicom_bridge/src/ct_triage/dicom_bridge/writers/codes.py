"""Coded concepts used by the result writers (PS3.16, SNOMED CT, LOINC, UCUM).

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
* Concepts that have no dedicated code are expressed with standard SNOMED CT attributes and
  the unit or finding site that makes them specific (no private coding scheme is used, so
  ``dciodvfy`` and every PACS know every code):

  - percent of a lung (or zone) involved by lesion: ``SCT 260858005`` "Extent" in UCUM
    ``%`` with the lung / zone as finding site (the pattern of PS3.16 ``DCM 112019``
    "Calcification extent as percent of volume");
  - CT severity score (5 lobar regions, 0-25): ``SCT 246262008`` "Score", UCUM ``{score}``;
  - triage category: ``SCT 246112005`` "Severity" with the SNOMED CT severity values
    ``17621005`` Normal, ``255604002`` Mild, ``6736007`` Moderate, ``24484000`` Severe
    (CID 3716 / 6130) and ``82334004`` Indeterminate (CID 4220);
  - triage priority (1 = read first): ``SCT 260870009`` "Priority", UCUM ``{rank}``;
  - the lung segmentation quality gate and a declined study: ``DCM 111065`` "Summary of
    Analyses" with its CID 6047 values ("All algorithms succeeded; with / without
    findings", "Not all algorithms succeeded; ...", "No algorithms succeeded; without
    findings");
  - total lesion volume: ``SCT 118565006`` Volume in a group whose finding is
    ``SCT 49755003`` "Morphologically Abnormal Structure" of the lung;
  - planar outlines: ``SCT 42798000`` "Area" (mm2) of a ``DCM 111030`` "Image Region".
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ct_triage.models.identity import PRODUCT_NAME, PRODUCT_VERSION
from ct_triage.models.quantify import TriageCategory

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
#: Percent of a lung (or zone) involved by lesion, with UCUM "%" (see the module docstring).
PERCENT_INVOLVEMENT = Code("260858005", "SCT", "Extent")
#: CT severity score (5 lobar regions, 0-25).
SEVERITY_SCORE = Code("246262008", "SCT", "Score")
#: Triage category (coded value, :data:`TRIAGE_VALUES`).
TRIAGE_CATEGORY = Code("246112005", "SCT", "Severity")
#: Triage priority, 1 = read first.
TRIAGE_PRIORITY = Code("260870009", "SCT", "Priority")
AREA = Code("42798000", "SCT", "Area")

UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_MM2 = Code("mm2", "UCUM", "square millimeter")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_SCORE = Code("{score}", "UCUM", "score")
UNIT_RANK = Code("{rank}", "UCUM", "rank")

#: Triage category values (SNOMED CT severity modifiers, CID 3716 / 6130; CID 4220).
TRIAGE_VALUES: dict[TriageCategory, Code] = {
    TriageCategory.NORMAL: Code("17621005", "SCT", "Normal"),
    TriageCategory.MILD: Code("255604002", "SCT", "Mild"),
    TriageCategory.MODERATE: Code("6736007", "SCT", "Moderate"),
    TriageCategory.SEVERE: Code("24484000", "SCT", "Severe"),
    TriageCategory.INDETERMINATE: Code("82334004", "SCT", "Indeterminate"),
}

#: The quality gate (:mod:`ct_triage.models.quality`) and a declined study, as the CAD
#: "Summary of Analyses" (TID 4015) with its CID 6047 values.
SUMMARY_OF_ANALYSES: Code = codes.DCM.SummaryOfAnalyses
ALL_SUCCEEDED_WITH_FINDINGS: Code = codes.DCM.AllAlgorithmsSucceededWithFindings
ALL_SUCCEEDED_WITHOUT_FINDINGS: Code = codes.DCM.AllAlgorithmsSucceededWithoutFindings
NOT_ALL_SUCCEEDED_WITH_FINDINGS: Code = codes.DCM.NotAllAlgorithmsSucceededWithFindings
NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS: Code = codes.DCM.NotAllAlgorithmsSucceededWithoutFindings
NONE_SUCCEEDED: Code = codes.DCM.NoAlgorithmsSucceededWithoutFindings


def analyses_summary(*, reliable: bool, findings: bool) -> Code:
    """The CID 6047 value for a result: lungs reliable or not, lesions found or not."""
    if reliable:
        return ALL_SUCCEEDED_WITH_FINDINGS if findings else ALL_SUCCEEDED_WITHOUT_FINDINGS
    return NOT_ALL_SUCCEEDED_WITH_FINDINGS if findings else NOT_ALL_SUCCEEDED_WITHOUT_FINDINGS


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
