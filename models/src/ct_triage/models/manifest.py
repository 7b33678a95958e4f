"""The model manifest: what a model file expects and produces, as validated data.

A model directory holds the ONNX file and ``manifest.json``. The manifest names the model,
pins the file by SHA-256, describes the input (channels, size, HU window, crop) and the labels,
and records the training data, its licence, the validation split and the measured metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ct_triage.models.errors import ModelError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"

#: The directory of the shipped weights (``lesion_seg.onnx`` and ``manifest.json``). It lives
#: here, in a module that imports nothing of the runtime, so that the runtime can name it
#: without importing :mod:`ct_triage.models.lesions` (which imports the runtime).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_CHUNK = 1 << 20


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """The network input: ``(N, channels, height, width)`` float32.

    Each channel is one axial slice (``channels`` adjacent slices centred on the target), HU
    clipped to ``hu_window`` and scaled to ``[0, 1]``. The slice is first cropped to the
    square box around the lungs plus ``crop_margin_mm`` and resampled to ``height x width``.
    """

    channels: int = Field(ge=1)
    height: int = Field(ge=16)
    width: int = Field(ge=16)
    hu_window: tuple[float, float]
    normalisation: Literal["window_0_1"] = "window_0_1"
    crop_margin_mm: float = Field(ge=0)
    pixel_spacing_mm: float | None = Field(
        default=None, description="None: the crop is resampled to the grid, spacing varies"
    )
    input_name: str = "image"
    output_name: str = "probabilities"

    @field_validator("hu_window")
    @classmethod
    def _window_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[1] > v[0]:
            raise ValueError(f"hu_window must be (lo, hi) with hi > lo, got {v}")
        if v[0] < -1024:
            raise ValueError("hu_window lower bound must be >= -1024 (air must map to 0)")
        return v


class TrainingInfo(_Frozen):
    """Where the weights came from (the model card's facts)."""

    data: str
    licence: str
    validation_split: list[str] = Field(default_factory=list)
    seed: int = 0
    config: str = ""
    notes: str = ""
    #: The constant subtracted from the background logit in the exported softmax head (a
    #: calibration, see the model card); ``None`` where the manifest predates this field.
    background_bias: float | None = None


class Manifest(_Frozen):
    """A model's manifest (``manifest.json``), validated and immutable."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: InputSpec
    labels: dict[int, str]
    training: TrainingInfo
    metrics: dict[str, float] = Field(default_factory=dict)

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if Path(v).name != v:
            raise ValueError(f"file must be a plain file name inside the model dir, got {v!r}")
        return v

    @model_validator(mode="after")
    def _labels_contiguous(self) -> Manifest:
        if sorted(self.labels) != list(range(len(self.labels))) or len(self.labels) < 2:
            raise ValueError(f"labels must be indices 0..K-1 with K >= 2, got {self.labels}")
        return self

    @property
    def num_classes(self) -> int:
        """Number of output classes ``K``."""
        return len(self.labels)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(model_dir: Path) -> Manifest:
    """Read and validate ``model_dir/manifest.json`` (the model file is not checked here).

    Raises
    ------
    ModelError
        The manifest is missing, is not JSON or does not match the schema (missing or
        unknown fields, bad values).
    """
    path = Path(model_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest {path} is missing") from exc
    except OSError as exc:
        raise ModelError(f"model manifest {path} cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelError(f"model manifest {path} is invalid: {problems}") from exc


def verify_file(manifest: Manifest, model_dir: Path) -> Path:
    """Check that the model file exists and matches the manifest's SHA-256.

    Returns
    -------
    pathlib.Path
        The verified model file.

    Raises
    ------
    ModelError
        The file is missing or its SHA-256 differs from the manifest's.
    """
    path = Path(model_dir) / manifest.file
    if not path.is_file():
        raise ModelError(f"model file {path} named by the manifest is missing")
    actual = sha256_of(path)
    if actual != manifest.sha256:
        raise ModelError(
            f"model file {path} does not match its manifest "
            f"(sha256 {actual}, manifest says {manifest.sha256})"
        )
    return path


def write_manifest(manifest: Manifest, model_dir: Path) -> Path:
    """Write ``manifest.json`` (pretty, stable key order) into ``model_dir``."""
    path = Path(model_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path
