"""Inference runtimes behind one small :class:`Predictor` protocol."""

from ct_triage.models.runtime.base import Predictor

__all__ = ["Predictor"]
