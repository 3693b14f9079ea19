"""MODELS_DIR/cache_registry.json: every model file the worker placed or found, shared by
all workers of an endpoint through the network volume.

Locks are soft leases (filelock.SoftFileLease): a marker file created exclusively and
refreshed by a heartbeat. Unlike flock they work between containers on a shared network
volume, and a crashed holder's claim expires after ``lease_s`` instead of blocking forever.
Writes go to a temporary file and are renamed over the registry, so readers never see a
half-written file; a corrupt or missing registry is rebuilt by scanning the folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import SoftFileLease, Timeout

from cache.safety import MODEL_EXTS
from schemas.errors import DownloadFailed

log = logging.getLogger(__name__)

REGISTRY_FILE = "cache_registry.json"
LOCK_DIR = ".locks"
VERSION = 1


def now() -> float:
    return round(time.time(), 3)


def lease_seconds() -> float:
    return float(os.environ.get("CACHE_LOCK_LEASE_S", "") or 30.0)


@contextmanager
def lease(models_dir: Path, key: str, *, timeout: float, what: str) -> Iterator[None]:
    """Hold the named soft lease under MODELS_DIR/.locks; DownloadFailed after ``timeout``."""
    lock_dir = models_dir / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:180]
    lock = SoftFileLease(str(lock_dir / f"{safe}.lock"), lease_duration=lease_seconds(), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise DownloadFailed(f"timed out after {timeout:.0f} s waiting for another worker holding the lock for "
                             f"{what}") from None
    try:
        yield
    finally:
        lock.release()


def atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def scan(models_dir: Path, kind_dirs: dict[str, str]) -> dict[str, dict]:
    """Entries for every model file in the kind folders (found, not placed: never evicted)."""
    entries: dict[str, dict] = {}
    t = now()
    for kind, sub in kind_dirs.items():
        folder = models_dir / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            rel_parts = path.relative_to(folder).parts
            if any(p.startswith(".") for p in rel_parts) or not path.name.lower().endswith(MODEL_EXTS):
                continue
            try:
                if not path.is_file():
                    continue
                size = path.stat().st_size
            except OSError:
                continue
            rel = f"{sub}/{'/'.join(rel_parts)}"
            entries[rel] = {"kind": kind, "name": path.stem, "path": rel, "source": None, "sha256": None,
                            "bytes": size, "added": t, "last_used": None, "uses": 0, "pinned": False,
                            "downloaded": False}
    return entries


class Registry:
    def __init__(self, models_dir: Path, kind_dirs: dict[str, str]) -> None:
        self.root = Path(models_dir)
        self.kind_dirs = kind_dirs
        self.path = self.root / REGISTRY_FILE

    # -- reading ---------------------------------------------------------------------------
    def _load(self) -> dict[str, dict] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("cache registry %s is unreadable (%s); rebuilding it by scanning", self.path, exc)
            return None
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            log.warning("cache registry %s has an unexpected shape; rebuilding it by scanning", self.path)
            return None
        return entries

    def entries(self) -> dict[str, dict]:
        """A snapshot without taking the lock (writes are atomic renames); scanned when absent."""
        loaded = self._load()
        return loaded if loaded is not None else scan(self.root, self.kind_dirs)

    def find_source(self, kind: str, key: str) -> dict | None:
        for e in self.entries().values():
            if e.get("kind") == kind and e.get("source_key") == key and (self.root / e["path"]).is_file():
                return e
        return None

    # -- writing ---------------------------------------------------------------------------
    def update(self, fn: Callable[[dict[str, dict]], Any], *, timeout: float = 60.0) -> Any:
        """Run ``fn(entries)`` under the registry lock and write the result atomically."""
        with lease(self.root, "registry", timeout=timeout, what="the cache registry"):
            entries = self._load()
            if entries is None:
                if self.path.exists():  # keep the unreadable one for a post-mortem, then start afresh
                    os.replace(self.path, self.path.with_name(REGISTRY_FILE + ".corrupt"))
                entries = scan(self.root, self.kind_dirs)
            else:
                # Files removed by hand since the last write disappear from the registry.
                entries = {k: v for k, v in entries.items() if (self.root / k).is_file()}
            result = fn(entries)
            atomic_write_json(self.path, {"version": VERSION, "entries": entries})
            return result

    def record(self, entry: dict) -> None:
        def apply(entries: dict[str, dict]) -> None:
            old = entries.get(entry["path"]) or {}
            merged = {**old, **entry}
            merged["added"] = old.get("added") or entry.get("added") or now()
            merged["uses"] = int(old.get("uses") or 0) + int(entry.get("uses") or 0)
            entries[entry["path"]] = merged
        self.update(apply)

    def touch(self, path: str, defaults: dict) -> None:
        """Mark a file used now (adding it, found rather than placed, if unknown)."""
        def apply(entries: dict[str, dict]) -> None:
            e = entries.get(path)
            if e is None:
                e = entries[path] = {"added": now(), "uses": 0, "pinned": False, "downloaded": False,
                                     "source": None, "sha256": None, **defaults}
            e["last_used"] = now()
            e["uses"] = int(e.get("uses") or 0) + 1
            for k in ("pinned",):
                if defaults.get(k):
                    e[k] = True
        self.update(apply)

    def touch_many(self, uses: dict[str, tuple[dict, int]]) -> None:
        """``touch`` for several files in one write: path -> (defaults, uses since the last write)."""
        def apply(entries: dict[str, dict]) -> None:
            t = now()
            for path, (defaults, count) in uses.items():
                try:
                    size = (self.root / path).stat().st_size
                except OSError:
                    continue  # gone since it was used: nothing to keep from eviction
                e = entries.get(path)
                if e is None:
                    e = entries[path] = {"added": t, "uses": 0, "pinned": False, "downloaded": False,
                                         "source": None, "sha256": None, "bytes": size, **defaults}
                e["last_used"] = t
                e["uses"] = int(e.get("uses") or 0) + max(1, count)
        self.update(apply)
