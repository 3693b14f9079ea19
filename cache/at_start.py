"""Place the models A1111 reads only at start, before start.sh launches it.

A1111 builds its upscaler list once, while it starts (``modules/initialize.py`` calls
``modelloader.load_upscalers``; ``GET /sdapi/v1/upscalers`` returns that list and no route
rescans it), and ADetailer lists its detectors when its script loads. A file that arrives
later is not seen until A1111 restarts, so start.sh runs ``python -m cache.at_start`` and
waits for it before starting A1111.

Which models: every catalog entry whose ``at_start`` names this backend (WEBUI_BACKEND), plus
the catalog ids listed in ``START_MODELS`` (commas or spaces); ``START_MODELS=none`` places
nothing. All of it ends ``START_MODELS_TIMEOUT`` seconds after it began. A model that cannot
be placed is logged and skipped: A1111 starts without it, and a job naming it is told how to
get it (a1111/start_only.py). The exit status is 1 when something was not placed, for the log.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cache import ModelCache
from cache.catalog import Catalog, CatalogEntry
from schemas.errors import WorkerError
from schemas.settings import Settings

log = logging.getLogger("start-models")

DEFAULT_TIMEOUT_S = 180.0
PARALLEL = 4  # a few small files: enough to overlap their round trips


@dataclass(frozen=True)
class Outcome:
    id: str
    ok: bool
    detail: str  # where it is, or why it is not


def requested(raw: str | None) -> tuple[bool, list[str]]:
    """(catalog-flagged entries wanted, extra ids) from START_MODELS."""
    text = (raw or "").strip()
    if text.lower() == "none":
        return False, []
    return True, [part for part in re.split(r"[\s,]+", text) if part]


def wanted(catalog: Catalog, backend: str, raw: str | None) -> tuple[list[CatalogEntry], list[Outcome]]:
    """The entries to place, each once, and an outcome for every START_MODELS id the catalog lacks."""
    flagged, ids = requested(raw)
    entries = [e for e in catalog.entries() if flagged and backend in e.at_start]
    unknown = []
    for ref in ids:
        entry = catalog.get(ref)
        if entry is None:
            unknown.append(Outcome(ref, False, f"START_MODELS names {ref!r}, which is not a catalog id "
                                               "(models.json, MODELS_CATALOG)"))
        elif entry not in entries:
            entries.append(entry)
    return entries, unknown


def place(cache: ModelCache, entry: CatalogEntry) -> Outcome:
    try:
        placed = cache.ensure(entry.kind, entry.id)
    except WorkerError as exc:
        return Outcome(entry.id, False, f"{exc.error_type}: {exc.message}")
    how = "downloaded to" if placed.downloaded else "already at"
    return Outcome(entry.id, True, f"{how} MODELS_DIR/{placed.path}")


def place_all(settings: Settings, catalog: Catalog, entries: list[CatalogEntry], timeout_s: float) -> list[Outcome]:
    cache = ModelCache(settings, catalog, deadline=time.monotonic() + timeout_s,
                       deadline_name="START_MODELS_TIMEOUT")
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(entries)), thread_name_prefix="start-models") as pool:
        return list(pool.map(lambda e: place(cache, e), entries))


def _timeout() -> float:
    raw = os.environ.get("START_MODELS_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        log.warning("START_MODELS_TIMEOUT=%r is not a number; using %g s", raw, DEFAULT_TIMEOUT_S)
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def run() -> list[Outcome]:
    """Read the environment and the catalog, place what they name; the outcomes, in order."""
    settings = Settings.from_env()
    catalog = Catalog.load(settings.catalog_path)
    entries, outcomes = wanted(catalog, settings.backend, os.environ.get("START_MODELS"))
    if entries:
        log.info("placing %d start-time model(s) for %s: %s", len(entries), settings.backend,
                 ", ".join(e.id for e in entries))
    return outcomes + place_all(settings, catalog, entries, _timeout())


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[start-models] %(levelname)s %(message)s", stream=sys.stderr)
    try:
        outcomes = run()
    except (WorkerError, ValueError) as exc:  # no catalog, a bad setting: A1111 starts anyway
        log.error("start-time models not placed: %s", getattr(exc, "message", exc))
        return 1
    for o in outcomes:
        if o.ok:
            log.info("%s: %s", o.id, o.detail)
        else:
            log.error("%s NOT placed (A1111 starts without it): %s", o.id, o.detail)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
