"""A site's connection to a shared Triton pool: reconnecting, with an optional local fallback.

Several hospital sites send their slices to one Triton Inference Server (the *pool*). A site
must keep working when the pool is down: it starts anyway, reconnects on the next study, and —
when configured with a fallback — runs the network on its own CPU meanwhile. Which runtime
produced a study's labels is recorded per thread (:meth:`PoolPredictor.take_used`), so the
report of each study can name it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import InferenceError, RuntimeUnavailable
from ct_triage.models.runtime.base import Predictor
from ct_triage.models.runtime.triton import TritonPredictor

logger = logging.getLogger(__name__)


class PoolPredictor:
    """The Triton pool behind the :class:`~ct_triage.models.runtime.base.Predictor` protocol.

    Parameters
    ----------
    connect
        Makes a checked :class:`TritonPredictor` (raises :class:`RuntimeUnavailable` while the
        pool is down; a :class:`~ct_triage.models.errors.ModelError` is a configuration error
        and propagates).
    url
        The pool, for messages.
    fallback
        The local runtime used while the pool is down; ``None``: a study fails with an
        :class:`InferenceError` (and its job is retried with backoff by the job store).
    retry_after_s
        With a fallback, how long after a pool failure the next study goes straight to the
        fallback before the pool is tried again.
    connect_retries, connect_backoff_s
        Connection attempts after the first, and the first delay (doubling), per call.
    """

    def __init__(
        self,
        connect: Callable[[], TritonPredictor],
        *,
        url: str,
        fallback: Predictor | None = None,
        retry_after_s: float = 15.0,
        connect_retries: int = 3,
        connect_backoff_s: float = 0.5,
    ) -> None:
        self._connect = connect
        self._url = url
        self._fallback = fallback
        self._retry_after_s = retry_after_s
        self._connect_retries = connect_retries if fallback is None else 0
        self._connect_backoff_s = connect_backoff_s
        self._lock = threading.Lock()
        self._pool: TritonPredictor | None = None
        self._next_try = 0.0
        self._used = threading.local()
        try:
            self._pool = connect()
        except RuntimeUnavailable as exc:
            then = "studies run on the local fallback" if fallback else "studies wait for it"
            logger.warning("Triton pool unavailable at start (%s); %s", exc, then)
            self._next_try = time.monotonic() + (retry_after_s if fallback else 0.0)
        where = f"triton:{url}" if self._pool is None else self._pool.provider
        self._provider = where if fallback is None else f"{where} (fallback {fallback.provider})"

    @property
    def provider(self) -> str:
        """The pool (and the fallback, when configured)."""
        return self._provider

    @property
    def max_batch(self) -> int:
        pool = self._pool
        return pool.max_batch if pool is not None else 32

    @property
    def fallback(self) -> Predictor | None:
        return self._fallback

    def take_used(self) -> list[str]:
        """The runtimes that served this thread's calls since the last take (then cleared)."""
        used: list[str] = getattr(self._used, "names", [])
        self._used.names = []
        return used

    def _note(self, name: str) -> None:
        names: list[str] = getattr(self._used, "names", [])
        if name not in names:
            names.append(name)
        self._used.names = names

    def _current_pool(self) -> TritonPredictor:
        """The connected pool, connecting (with retries) when needed."""
        with self._lock:
            if self._pool is not None:
                return self._pool
            if self._fallback is not None and time.monotonic() < self._next_try:
                raise RuntimeUnavailable(f"Triton pool at {self._url} is down (retrying later)")
            attempt = 0
            while True:
                try:
                    self._pool = self._connect()
                    logger.info("Triton pool at %s is back", self._url)
                    return self._pool
                except RuntimeUnavailable:
                    if attempt >= self._connect_retries:
                        self._next_try = time.monotonic() + self._retry_after_s
                        raise
                    time.sleep(self._connect_backoff_s * 2**attempt)
                    attempt += 1

    def _pool_failed(self, pool: TritonPredictor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
                self._next_try = time.monotonic() + self._retry_after_s

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run on the pool; when it is down, on the fallback (or raise).

        Raises
        ------
        InferenceError
            The pool is down and there is no fallback (a one-line reason naming the pool),
            or the runtime that ran failed.
        """
        try:
            pool = self._current_pool()
        except RuntimeUnavailable as exc:
            if self._fallback is None:
                raise InferenceError(f"Triton pool unavailable: {exc}") from exc
            return self._run_fallback(batch, str(exc))
        try:
            result = pool.predict(batch)
        except InferenceError as exc:
            if self._fallback is None:
                raise
            self._pool_failed(pool)
            return self._run_fallback(batch, str(exc))
        self._note(pool.provider)
        return result

    def _run_fallback(self, batch: npt.NDArray[np.float32], why: str) -> npt.NDArray[np.float32]:
        assert self._fallback is not None
        logger.warning("Triton pool failed (%s); running on the local fallback", why)
        result = self._fallback.predict(batch)
        self._note(f"{self._fallback.provider} (local fallback)")
        return result
