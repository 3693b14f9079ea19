"""Last-used times for the LRU eviction (CACHE_MAX_GB), kept up to date cheaply.

Every model a job uses counts as a use, including the many that A1111 already lists and
the cache is never asked about: without that, the most used model would look the least
recently used and be evicted first. A registry write takes the shared registry lease, so a
worker writes a model's use at most once per CACHE_TOUCH_INTERVAL_S (the uses in between
are counted and added with the next write), and all of one job's due uses in one write.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cache.registry import Registry
from schemas.errors import WorkerError

log = logging.getLogger(__name__)


class Use(Protocol):
    """One model file a job used: what the registry records it as when it does not know it."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...  # relative to MODELS_DIR, e.g. "loras/x.safetensors"


# (MODELS_DIR, relative path) -> [time.monotonic() of this worker's last write, uses not written yet]
_pending: dict[tuple[str, str], list[float]] = {}
_lock = threading.Lock()


def touch_interval_s() -> float:
    raw = os.environ.get("CACHE_TOUCH_INTERVAL_S", "").strip()
    try:
        return max(0.0, float(raw)) if raw else 300.0
    except ValueError:
        log.warning("CACHE_TOUCH_INTERVAL_S=%r is not a number; using 300", raw)
        return 300.0


def noted(root: Path, path: str) -> None:
    """The registry was just written for ``path`` (placed or found by the cache): not due again yet."""
    with _lock:
        _pending[(str(root), path)] = [time.monotonic(), 0.0]


def _due(root: Path, uses: Iterable[Use], interval: float) -> dict[str, tuple[Use, int]]:
    """Count ``uses`` and take out those whose last write is older than ``interval``."""
    t = time.monotonic()
    due: dict[str, tuple[Use, int]] = {}
    with _lock:
        for use in uses:
            state = _pending.setdefault((str(root), use.path), [float("-inf"), 0.0])
            state[1] += 1
            if t - state[0] >= interval:
                due[use.path] = (use, int(state[1]))
                state[:] = [t, 0.0]
    return due


def record_uses(registry: Registry, uses: Iterable[Use], *, interval: float | None = None) -> list[str]:
    """Write the due uses in one registry update; returns their paths. Never fails a job."""
    due = _due(registry.root, {u.path: u for u in uses}.values(),
               touch_interval_s() if interval is None else interval)
    if not due:
        return []
    try:
        registry.touch_many({p: ({"kind": u.kind, "name": u.name, "path": p}, n) for p, (u, n) in due.items()})
    except (WorkerError, OSError) as exc:  # bookkeeping only: the job's models are present
        log.warning("cache registry: last-used times not updated for %s: %s", ", ".join(due), exc)
        with _lock:
            for p, (_, n) in due.items():  # try again with the next job
                _pending[(str(registry.root), p)] = [float("-inf"), float(n)]
        return []
    return sorted(due)
