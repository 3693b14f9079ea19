"""Cross-worker in-use markers: a running job's claim on the model files it generates with.

Eviction (CACHE_MAX_GB) on any worker of the volume deletes only files that no live marker
names. A job writes one marker, MODELS_DIR/.inuse/<holder>.json, listing the MODELS_DIR-
relative paths it uses, refreshes the marker's mtime from a heartbeat thread while it runs
and removes it at the end. A marker not refreshed for its lease (CACHE_INUSE_LEASE_S: the
job's process or its whole worker died) protects nothing and is removed by the next
eviction, so a crash cannot keep files forever.

Markers are written, and read by eviction, under one soft lease: an eviction either sees a
job's marker, or deletes the file before the job's marker exists, and the job's presence
check after marking then finds it missing and has it placed again. A marker's age is taken
against the mtime of a probe file written just before, so both times come from the volume's
clock rather than from two workers' clocks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from cache.registry import atomic_write_json, lease

log = logging.getLogger(__name__)

INUSE_DIR = ".inuse"
LOCK_KEY = "inuse"
LOCK_TIMEOUT_S = 30.0


def inuse_lease_seconds() -> float:
    raw = os.environ.get("CACHE_INUSE_LEASE_S", "").strip()
    try:
        value = float(raw) if raw else 120.0
    except ValueError:
        log.warning("CACHE_INUSE_LEASE_S=%r is not a number; using 120", raw)
        value = 120.0
    return value if value > 0 else 120.0


def in_use_lock(root: Path):  # noqa: ANN201 - the lease's context manager
    """The lease under which markers are written and eviction reads them."""
    return lease(root, LOCK_KEY, timeout=LOCK_TIMEOUT_S, what="the in-use markers")


class InUseMarker:
    """One job's marker; ``hold`` adds paths, ``release`` ends the claim. Thread-safe."""

    def __init__(self, root: Path, *, lease_s: float | None = None) -> None:
        self.root = Path(root)
        self.lease_s = lease_s if lease_s is not None else inuse_lease_seconds()
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:60]
        self.holder = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.file = self.root / INUSE_DIR / f"{self.holder}.json"
        self.paths: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, paths: Iterable[str]) -> None:
        """Claim ``paths`` as well (written before returning: eviction respects them from now)."""
        with self._lock:
            wanted = self.paths | frozenset(paths)
            if wanted == self.paths and (self.file.exists() or not wanted):
                return
            with in_use_lock(self.root):
                self._write(wanted)
            self.paths = wanted
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, name=f"inuse-{self.holder}", daemon=True)
                self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self.paths = frozenset()
            try:
                self.file.unlink(missing_ok=True)
            except OSError as exc:  # it expires on its own
                log.warning("in-use marker %s not removed: %s", self.file, exc)

    def _write(self, paths: frozenset[str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file, {"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                                      "lease_s": self.lease_s, "paths": sorted(paths)})

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                os.utime(self.file)
            except FileNotFoundError:  # removed as stale while this worker was stalled: claim again
                try:
                    with self._lock, in_use_lock(self.root):
                        if not self._stop.is_set():
                            self._write(self.paths)
                except Exception as exc:  # noqa: BLE001 - the heartbeat must keep going
                    log.warning("in-use marker %s not renewed: %s", self.file, exc)
            except OSError as exc:
                log.warning("in-use marker %s not renewed: %s", self.file, exc)


def _volume_now(folder: Path) -> float:
    probe = folder / f".probe-{uuid.uuid4().hex[:12]}.tmp"
    try:
        probe.write_bytes(b"")
        return probe.stat().st_mtime
    finally:
        probe.unlink(missing_ok=True)


def _marker_paths(path: Path, now: float, default_lease: float) -> list[str] | None:
    """The paths a live marker holds; None when it is stale (and then removed)."""
    try:
        age = now - path.stat().st_mtime
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        data = {}
        log.warning("in-use marker %s is unreadable (%s)", path, exc)
    lease_s = data.get("lease_s") if isinstance(data, dict) else None
    if not isinstance(lease_s, (int, float)) or lease_s <= 0:
        lease_s = default_lease
    if age > lease_s:
        log.info("in-use marker %s expired %.0f s ago (its holder stopped renewing it); removing it",
                 path.name, age - lease_s)
        path.unlink(missing_ok=True)
        return None
    paths = data.get("paths") if isinstance(data, dict) else None
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def live_holds(root: Path, *, default_lease: float | None = None) -> set[str]:
    """Every MODELS_DIR-relative path a live marker holds; stale markers are removed.

    Call it under ``in_use_lock`` and delete files before releasing the lock.
    """
    folder = Path(root) / INUSE_DIR
    if not folder.is_dir():
        return set()
    lease_s = default_lease if default_lease is not None else inuse_lease_seconds()
    now = _volume_now(folder)
    held: set[str] = set()
    for marker in sorted(folder.glob("*.json")):
        held.update(_marker_paths(marker, now, lease_s) or [])
    return held
