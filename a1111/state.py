"""What the worker keeps between jobs, one ``WorkerState`` per A1111 URL.

A worker serves one A1111 for its whole life, so its HTTP client (kept-alive connections),
A1111's lists, whether A1111 has been seen ready, and the parsed catalog are kept across
jobs. They are keyed by URL because tests and tools point the worker at several servers in
one process; ``reset_worker_state`` forgets all of it (a new server may reuse a port).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a1111.client import A1111Client
from a1111.lists import LiveLists
from cache.catalog import Catalog
from schemas.settings import Settings


@dataclass
class ColdStart:
    """Seconds since A1111's launch at which each phase was first seen."""

    launched_at: float | None = None  # wall clock; None when nobody launched A1111 for us
    api_up_s: float | None = None
    model_loaded_s: float | None = None
    warm_s: float | None = None
    no_checkpoint: bool = False
    noticed_at: dict[str, float] = field(default_factory=dict)  # phase -> time.monotonic()

    def as_dict(self) -> dict[str, Any]:
        return {
            "api_up_s": self.api_up_s,
            "model_loaded_s": self.model_loaded_s,
            "warm_s": self.warm_s,
            "no_checkpoint": self.no_checkpoint,
        }


@dataclass
class ReadyState:
    """What a1111.readiness has found out about one A1111."""

    ready: bool = False
    first_call: float | None = None  # time.time() of the first ensure_ready, when not supervised
    cold: ColdStart = field(default_factory=ColdStart)
    lock: threading.Lock = field(default_factory=threading.Lock)
    attempt: Any = None  # a1111.readiness's wait in progress, shared by every job that waits
    last_failure: str | None = None  # why the last attempt failed; None once one succeeded


class WorkerState:
    """The client, live lists, readiness and catalog of the worker for one A1111 URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = A1111Client(url)
        self.lists = LiveLists(self.client)
        self.readiness = ReadyState()
        self._catalog: tuple[tuple[str, float], Catalog] | None = None
        self._catalog_lock = threading.Lock()

    def catalog(self, path: str | Path) -> Catalog | None:
        """The catalog file at ``path``, parsed again only when it changes; None when absent."""
        path = Path(path)
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            return None
        with self._catalog_lock:
            if self._catalog is not None and self._catalog[0] == key:
                return self._catalog[1]
        catalog = Catalog.load(path)
        with self._catalog_lock:
            self._catalog = (key, catalog)
        return catalog


_STATES: dict[str, WorkerState] = {}
_LOCK = threading.Lock()


def state_for(where: Settings | str) -> WorkerState:
    """The worker's state for the A1111 of ``where`` (settings or a URL), made on first use."""
    url = where if isinstance(where, str) else where.a1111_url
    with _LOCK:
        state = _STATES.get(url)
        if state is None:
            state = _STATES[url] = WorkerState(url)
        return state


def reset_worker_state() -> None:
    """Forget every A1111's state: the next job starts as on a fresh worker."""
    with _LOCK:
        _STATES.clear()
