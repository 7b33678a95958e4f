"""What every output says about where it came from."""

from __future__ import annotations

from dataclasses import dataclass

#: The statement every output carries (report.json, SEG, SR, overlay, CSV, web page).
DISCLAIMER = (
    "AI-generated triage aid from chest-ct-triage. NOT FOR PRIMARY DIAGNOSIS: "
    "results must be reviewed by a qualified radiologist."
)

#: Short form that fits in DICOM LO (64 chars) attributes such as SeriesDescription.
DISCLAIMER_SHORT = "AI result - not for primary diagnosis"

PRODUCT_NAME = "chest-ct-triage"
PRODUCT_VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """The model that produced a result: named by every output object.

    Parameters
    ----------
    name
        Model name, e.g. ``"ct-triage-lesion-unet2d"``.
    version
        Model version string from the manifest.
    sha256
        Hex digest of the model file actually loaded.
    provider
        Execution provider actually used (e.g. ``"CPUExecutionProvider"``), or ``""``.
    """

    name: str
    version: str
    sha256: str
    provider: str = ""

    @property
    def algorithm_label(self) -> str:
        """``name version`` as one short label (DICOM LO, at most 64 characters)."""
        return f"{self.name} {self.version}"[:64]
