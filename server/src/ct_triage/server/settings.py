"""One typed settings object per process (STYLE.md item 6).

Values come from keyword arguments, then ``CT_TRIAGE_*`` environment variables, then an
optional ``.env``-style file named by ``CT_TRIAGE_SETTINGS_FILE``. Nothing is built at import
time: the CLI (or ``create_app``) builds one :class:`Settings` and passes it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ct_triage.models.quantify import TriageThresholds

Provider = Literal["cpu", "cuda", "tensorrt"]


class Settings(BaseSettings):
    """Configuration of chest-ct-triage (environment prefix ``CT_TRIAGE_``)."""

    model_config = SettingsConfigDict(
        env_prefix="CT_TRIAGE_",
        env_file=os.environ.get("CT_TRIAGE_SETTINGS_FILE"),
        extra="forbid",
        frozen=True,
    )

    #: Folder holding ``manifest.json`` and the ONNX file; ``None`` = the shipped model.
    model_dir: Path | None = None
    #: Inference execution provider requested (the one actually used is reported).
    provider: Provider = "cpu"
    #: Threads for CPU inference; ``None`` lets ONNX Runtime decide.
    inference_threads: int | None = Field(default=None, ge=1, le=256)

    #: Series selection.
    min_slices: int = Field(default=40, ge=1)
    max_slice_thickness_mm: float = Field(default=5.0, gt=0)

    #: Triage thresholds (total percent of lung involved).
    triage_mild_min_percent: float = 0.5
    triage_mild_min_lesion_ml: float = 1.0
    triage_moderate_min_percent: float = 25.0
    triage_severe_min_percent: float = 50.0

    #: Overlay series: "key" slices only, or "all" source slices.
    overlay_slices: Literal["key", "all"] = "key"

    #: Log format for the CLI: "text" or "json".
    log_format: Literal["text", "json"] = "text"

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not (v / "manifest.json").is_file():
            raise ValueError(f"model_dir {v} has no manifest.json")
        return v

    @model_validator(mode="after")
    def _thresholds_valid(self) -> Settings:
        self.thresholds()  # raises ValueError with a clear message
        return self

    def thresholds(self) -> TriageThresholds:
        """The triage thresholds as the compute type."""
        return TriageThresholds(
            mild_min_percent=self.triage_mild_min_percent,
            mild_min_lesion_ml=self.triage_mild_min_lesion_ml,
            moderate_min_percent=self.triage_moderate_min_percent,
            severe_min_percent=self.triage_severe_min_percent,
        )
