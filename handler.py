"""RunPod serverless worker for A1111 / Forge: thin wiring of the job flow.

    raw job -> parse_job (field and name problems in one round) -> action:
      txt2img / img2img (init_images): actions/generate.py: output.preflight -> [input images]
               -> presets.expand -> ensure_ready -> per step: resolve names -> compile
               -> client (with progress) -> results.package -> presets.finish -> output.deliver
      upscale: actions/upscale.py (A1111's extras)
      health (a1111/health.py), list_models, prefetch
    every result is counted for health (monitor/metrics.py)
    any exception -> schemas.errors.error_result

Importing this module has no side effects: ``runpod.serverless.start`` runs only under
``__main__``, so ``from handler import handler; handler({"id": "t", "input": {...}})`` works
in tests and tools.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # the pinned numpy / pillow and this code need 3.11 (pyproject.toml)
    sys.exit(f"handler.py needs Python 3.11 or newer, this is Python {sys.version.split()[0]}: use a 3.11+ venv")

import asyncio
import contextvars
import logging
import os
import threading
import time
from typing import Any

from a1111.client import A1111Client
from a1111.health import health
from a1111.lists import MODEL_LISTS
from a1111.precheck import name_problems
from a1111.readiness import prewarm_in_background, recheck_unavailable
from a1111.state import state_for
from actions.generate import run_generation
from actions.upscale import run_upscale
from cache import ModelCache
from cache.catalog import Catalog
from cache.inspect import family_from_metadata
from monitor.metrics import counted
from schemas.errors import A1111Unavailable, JobTimeout, WorkerError, error_result
from schemas.job import Job, parse_job, ref_value
from schemas.redact import install_log_redaction, redact
from schemas.settings import Settings

log = logging.getLogger("worker")


# --------------------------------------------------------------------------- shared state
def get_client(settings: Settings) -> A1111Client:
    """The worker's client for A1111 (one per URL, so connections are kept alive)."""
    return state_for(settings).client


def load_catalog(settings: Settings) -> Catalog | None:
    """models.json as a cache.catalog.Catalog (re-read when the file changes); None if absent."""
    return state_for(settings).catalog(settings.catalog_path)


# --------------------------------------------------------------------------- actions
def run_health(settings: Settings) -> dict:
    return health(settings)


def run_list_models(settings: Settings) -> dict:
    lists = state_for(settings).lists
    catalog = load_catalog(settings)
    embeddings = lists.embeddings(fresh=True)
    out: dict[str, Any] = {
        "checkpoints": [{"title": e.get("title"), "model_name": e.get("model_name")}
                        for e in lists.checkpoints(fresh=True)],
        "loras": [{"name": e.get("name"), "alias": e.get("alias"),
                   "family": family_from_metadata(e.get("metadata"))} for e in lists.loras(fresh=True)],
        "embeddings": [{"name": n, "shape": e.get("shape"), "usable_now": not e.get("skipped")}
                       for n, e in embeddings.items()],
        "samplers": [s.get("name") for s in lists.samplers(fresh=True)],
        "schedulers": [s.get("label") or s.get("name") for s in lists.schedulers(fresh=True)],
        "catalog": [],
    }
    if catalog is not None:
        out["catalog"] = [{"id": e.id, "kind": e.kind, "file": e.file, "family": e.family,
                           "recommended_weight": e.recommended_weight, "default": e.default,
                           "description": e.description} for e in catalog.entries()]
    return out


def run_prefetch(parsed: Job, settings: Settings, started: float) -> dict:
    """Place the job's models; every download and lease wait ends PREFETCH_TIMEOUT after the
    job started (prefetch may take longer than a generation's JOB_TIMEOUT, never forever)."""
    catalog = load_catalog(settings)
    refs: dict[str, list] = {}
    if parsed.checkpoints:
        refs["checkpoint"] = [ref_value(r) for r in parsed.checkpoints]
    if parsed.loras:
        refs["lora"] = [ref_value(spec.ref()) for spec in parsed.loras]
    if parsed.embeddings:
        refs["embedding"] = [ref_value(r) for r in parsed.embeddings]
    cache = ModelCache(settings, catalog, deadline=started + settings.prefetch_timeout_s,
                       deadline_name="PREFETCH_TIMEOUT")
    placed = cache.prefetch(refs, catalog_defaults=parsed.catalog)
    return {"models": placed, "a1111_refreshed": _refresh_lists(settings, placed)}


def _refresh_lists(settings: Settings, placed: list[dict]) -> list[str]:
    """Ask A1111 to rescan the folders that just got new files, so the next job on this worker
    sees them at once; returns the lists refreshed. Best effort: an A1111 that is not up yet
    scans its folders when it starts, and a txt2img job refreshes again on a miss."""
    lists = state_for(settings).lists
    done = []
    for kind in sorted({p["kind"] for p in placed if p.get("downloaded")} & MODEL_LISTS.keys()):
        route = MODEL_LISTS[kind].refresh
        try:
            lists.refresh(kind)
        except WorkerError as exc:
            log.info("prefetch: A1111 did not refresh its %s list (%s)", route, exc.message[:200])
            continue
        done.append(route)
    return done


# --------------------------------------------------------------------------- entry points
@counted  # every result, errors included, is counted for health
def run_job(job: dict) -> dict:
    """Run one RunPod job; always returns a result dict (errors included)."""
    started = time.monotonic()
    job = job if isinstance(job, dict) else {}
    job_id = job.get("id")
    try:
        settings = Settings.from_env()
        # Names are checked with the field problems, so that a bad job needs one round.
        parsed = parse_job(job.get("input"), names=lambda j: name_problems(j, settings, load_catalog(settings)))
        log.info("job %s: action %s", job_id, parsed.action)
        if parsed.action == "health":
            return run_health(settings)
        if parsed.action == "list_models":
            return run_list_models(settings)
        if parsed.action == "prefetch":
            return run_prefetch(parsed, settings, started)
        if parsed.action == "upscale":
            return run_upscale(job, parsed, settings, started, _raise_if_cancelled)
        return run_generation(job, parsed, settings, started, _raise_if_cancelled)  # txt2img, img2img
    except A1111Unavailable as exc:
        exc = recheck_unavailable(exc)  # a dead A1111 process: log tail + refresh_worker
        log.error("job %s: A1111 unavailable: %s", job_id, redact(exc.message))
        return error_result(exc)
    except WorkerError as exc:
        log.info("job %s failed: %s: %s", job_id, exc.error_type, redact(exc.message)[:300])
        return error_result(exc)
    except Exception as exc:  # noqa: BLE001 - error_result logs it and answers one sentence
        return error_result(exc)
    finally:
        log.info("job %s done in %.2f s", job_id, time.monotonic() - started)


def handler(job: dict) -> dict:
    """RunPod handler (synchronous)."""
    return run_job(job)


# One job at a time: A1111 runs one generation at a time anyway, and a second job would
# wait on its queue lock with its own timeout running. After a cancel, the cancelled job's
# thread is still finishing (A1111 stops at its next sampling step); the next job waits here.
_job_lock = threading.Lock()
# Set when RunPod cancels the job; asyncio.to_thread copies the context into the job's thread.
_cancelled: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("cancelled", default=None)


def _raise_if_cancelled() -> None:
    event = _cancelled.get()
    if event is not None and event.is_set():
        raise JobTimeout("the job was cancelled before its generation started")


def _run_serialized(job: dict) -> dict:
    with _job_lock:
        return run_job(job)


async def async_handler(job: dict) -> dict:
    """RunPod entry point. The SDK calls a sync handler on its event loop, which the handler
    then blocks, so a cancel can only land after the job has ended; in a thread, the cancel
    arrives at once as CancelledError: interrupt A1111, then re-raise so RunPod records the
    job as cancelled. The client's interrupt also makes the job's own txt2img call fail
    instead of passing off A1111's partial image as a result."""
    cancelled = threading.Event()
    _cancelled.set(cancelled)
    try:
        return await asyncio.to_thread(_run_serialized, job)
    except asyncio.CancelledError:
        log.warning("job %s cancelled: interrupting A1111", job.get("id") if isinstance(job, dict) else None)
        cancelled.set()
        try:
            get_client(Settings.from_env()).interrupt()
        except Exception:  # noqa: BLE001 - nothing may mask the cancellation
            log.exception("interrupting A1111 after a cancel failed")
        raise


if __name__ == "__main__":
    # The SDK's default DEBUG level logs every job's whole input and output (base64 images,
    # tokens); it reads the level when runpod is imported.
    if not (os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL")):
        os.environ["RUNPOD_LOG_LEVEL"] = "INFO"
    import runpod

    logging.getLogger().setLevel(logging.INFO)
    install_log_redaction()  # on the root handler runpod sets up: every logger's lines, libraries' too
    try:
        _settings = Settings.from_env()
    except ValueError as exc:  # every job reports it too, as a clear error
        log.error("configuration: %s", exc)
    else:
        prewarm_in_background(_settings)  # overlap the warm-up with the wait for jobs
    runpod.serverless.start({"handler": async_handler})
