"""Size budget for downloaded models (CACHE_MAX_GB): least recently used go first.

``choose_victims`` is pure; ``evict`` applies it under the registry lock. Only files the
worker downloaded are candidates: never a pinned file, a catalog default, a file in use by
the current job or by a running job on any worker (cache/inuse.py markers), or one found on
the volume (put there by the operator).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cache.inuse import in_use_lock, live_holds
from schemas.errors import DownloadFailed

log = logging.getLogger(__name__)


def choose_victims(entries: dict[str, dict], budget_bytes: int, protected: Iterable[str]) -> list[str]:
    """Relative paths to delete so downloaded files fit ``budget_bytes``, oldest use first.

    ``protected`` holds relative paths or names (file stems) that must stay.
    """
    keep = set(protected)
    downloaded = {p: e for p, e in entries.items() if e.get("downloaded")}
    total = sum(int(e.get("bytes") or 0) for e in downloaded.values())
    if total <= budget_bytes:
        return []
    candidates = sorted(
        (p for p, e in downloaded.items()
         if not e.get("pinned") and p not in keep and e.get("name") not in keep),
        key=lambda p: (downloaded[p].get("last_used") or downloaded[p].get("added") or 0, p),
    )
    victims = []
    for p in candidates:
        if total <= budget_bytes:
            break
        victims.append(p)
        total -= int(downloaded[p].get("bytes") or 0)
    return victims


def evict(registry: Any, budget_gb: float, protected: Iterable[str]) -> list[str]:
    """Delete the chosen files and their registry entries; returns what was removed."""
    budget = int(budget_gb * 1024**3)
    keep = list(protected)
    root = Path(registry.root)

    def apply(entries: dict[str, dict]) -> list[str]:
        removed = []
        # Held while deleting, so that no job marks a file between the check and the delete.
        with in_use_lock(root):
            held = live_holds(root)
            for rel in choose_victims(entries, budget, [*keep, *held]):
                try:
                    (root / rel).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cache eviction: cannot remove %s: %s", rel, exc)
                    continue
                entries.pop(rel, None)
                removed.append(rel)
        return removed

    try:
        removed = registry.update(apply)
    except DownloadFailed as exc:  # a lease timed out: evict next time rather than delete blindly
        log.warning("cache eviction skipped: %s", exc.message)
        return []
    if removed:
        log.info("cache eviction (CACHE_MAX_GB=%s): removed %s", budget_gb, ", ".join(removed))
    return removed
