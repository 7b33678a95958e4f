"""Durable jobs: the store (SQLite by default, PostgreSQL for many workers) and the workers."""

from ct_triage.server.jobs.model import Batch, BatchProgress, Job, JobKind, JobState, JobStore

__all__ = ["Batch", "BatchProgress", "Job", "JobKind", "JobState", "JobStore"]
