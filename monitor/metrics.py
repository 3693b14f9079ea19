"""Counters of the jobs this worker process has answered, for the health action.

Recording a job costs a few dictionary look-ups under a lock: its outcome, its error type,
how many images it returned and its generation seconds (``timings.generate_s``). Durations
are kept in a bounded ring, so the median and p95 describe recent jobs and memory stays
flat however long the worker lives. The summary is computed only when health asks.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Enough for a stable p95 over the last few hundred generations; about 8 KB of floats.
RECENT_GENERATIONS = 1000
_MAX_TYPE_CHARS = 40  # error types are our own short names; the cap keeps a bad one bounded


@dataclass(frozen=True)
class Outcome:
    """What one job's result says about the job (see ``outcome``)."""

    ok: bool
    error_type: str | None
    images: int
    generate_s: float | None
    refresh_worker: bool


def outcome(result: Mapping[str, Any]) -> Outcome:
    """The facts the counters keep from a job's result dict. PURE."""
    ok = "error" not in result
    error_type = None if ok else str(result.get("error_type") or "unknown")[:_MAX_TYPE_CHARS]
    timings = result.get("timings")
    gen = timings.get("generate_s") if isinstance(timings, Mapping) else None
    generate_s = float(gen) if isinstance(gen, int | float) and not isinstance(gen, bool) and gen >= 0 else None
    images = result.get("images")
    count = len(images) if ok and generate_s is not None and isinstance(images, list) else 0
    return Outcome(ok, error_type, count, generate_s if ok else None, result.get("refresh_worker") is True)


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of sorted values (``share`` in (0, 1]); the value a share of
    jobs stayed under, always one that was measured. PURE."""
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def duration_summary(durations: Sequence[float]) -> dict[str, Any]:
    """Median and p95 of generation seconds (None without any). PURE."""
    if not durations:
        return {"median": None, "p95": None, "samples": 0}
    ordered = sorted(durations)
    return {"median": round(statistics.median(ordered), 3), "p95": round(percentile(ordered, 0.95), 3),
            "samples": len(ordered)}


class JobCounters:
    """Every job's outcome since the worker process started. Thread-safe."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (a new worker; tests)."""
        with self._lock:
            self._started = self._now()
            self._jobs = 0
            self._failed: Counter[str] = Counter()
            self._images = 0
            self._generate_total = 0.0
            self._recent: deque[float] = deque(maxlen=RECENT_GENERATIONS)
            # The error type of a result that asked RunPod for a new worker, until a
            # generation succeeds again: the model cannot serve meanwhile.
            self._broken: str | None = None

    def record(self, result: Mapping[str, Any]) -> None:
        out = outcome(result)
        with self._lock:
            self._jobs += 1
            if out.error_type is not None:
                self._failed[out.error_type] += 1
                if out.refresh_worker:
                    self._broken = out.error_type
            if out.generate_s is not None:
                self._recent.append(out.generate_s)
                self._generate_total += out.generate_s
                self._images += out.images
                self._broken = None

    @property
    def broken(self) -> str | None:
        """The error type that left the backend unable to serve, if one did since the last
        successful generation."""
        with self._lock:
            return self._broken

    def snapshot(self) -> dict[str, Any]:
        """The counters as health reports them."""
        with self._lock:
            jobs, failed, images = self._jobs, dict(self._failed), self._images
            total, recent, started = self._generate_total, list(self._recent), self._started
        failures = sum(failed.values())
        return {
            "since_s": round(self._now() - started, 1),
            "total": jobs,
            "succeeded": jobs - failures,
            "failed": failures,
            "failed_by_type": dict(sorted(failed.items())),
            "success_rate": round((jobs - failures) / jobs, 4) if jobs else None,
            "generation_s": duration_summary(recent),
            "images": images,
            "images_per_minute": round(images * 60 / total, 2) if total > 0 else None,
        }


WORKER_JOBS = JobCounters()


def counted(run: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """Wrap the job runner so every result it returns is counted in ``WORKER_JOBS``;
    counting never changes or fails a job."""

    @functools.wraps(run)
    def wrapper(job: dict) -> dict:
        result = run(job)
        try:
            WORKER_JOBS.record(result)
        except Exception:  # noqa: BLE001 - a counter must not fail the job it counts
            log.exception("counting a job's result failed")
        return result

    return wrapper
