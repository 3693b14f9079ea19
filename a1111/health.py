"""The health action's answer: is A1111 serving, what model, what GPU, how have jobs gone.

A worker whose readiness check is under way answers ``status: "starting"`` at once (after
at most ``STARTING_GRACE_S``), from what readiness has seen so far, without asking A1111
anything: a job sent meanwhile would wait for the warm-up anyway, and RunPod's Hub tests a
fresh build with this very action.
Otherwise A1111 is asked as before (ping, options, memory), and an A1111 that does not
answer fails the action as any job would (a dead process: ``refresh_worker``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from a1111.readiness import cold_start, last_failure, recheck_unavailable, warming_up
from a1111.state import state_for
from a1111.supervisor import Supervisor
from monitor.gpu import read_gpu
from monitor.metrics import WORKER_JOBS, JobCounters
from schemas.errors import A1111Unavailable, WorkerError
from schemas.settings import Settings

# A readiness check that is about to end (an A1111 already up when the worker starts, as in
# a local run) gets this long, so health reports the outcome rather than a start of milliseconds.
STARTING_GRACE_S = 0.3
_GRACE_POLL_S = 0.01

GpuReader = Callable[[], tuple[dict[str, Any] | None, str | None]]

# The phases of a1111.readiness in order, with what the worker waits for before each is seen.
_PHASES = (("api_up_s", "API answering"), ("model_loaded_s", "default checkpoint loaded"),
           ("warm_s", "warm-up generation"))


def waiting_for(cold: Mapping[str, Any]) -> str | None:
    """The first cold-start phase not seen yet (None once all are, or without a checkpoint). PURE."""
    if cold.get("no_checkpoint") and cold.get("api_up_s") is not None:
        return None
    return next((what for key, what in _PHASES if cold.get(key) is None), None)


def model_status(checkpoint: str | None, *, starting: bool, broken: str | None,
                 start_failed: str | None = None) -> dict[str, Any]:
    """``loading`` while the worker starts, ``failed`` after a result that asked for a new
    worker (until a generation succeeds) or while the last start-up check stands failed,
    ``none`` without a loaded checkpoint, else ``loaded``. PURE."""
    if starting:
        return {"status": "loading", "checkpoint": None}
    if broken is not None:
        return {"status": "failed", "checkpoint": checkpoint,
                "reason": f"a job failed with {broken} and asked RunPod to replace this worker"}
    if start_failed is not None:
        return {"status": "failed", "checkpoint": checkpoint,
                "reason": f"the start-up check failed: {start_failed} (the next job checks again)"}
    return {"status": "loaded" if checkpoint else "none", "checkpoint": checkpoint or None}


def health(settings: Settings, *, jobs: JobCounters = WORKER_JOBS, gpu: GpuReader = read_gpu,
           supervisor: Supervisor | None = None) -> dict[str, Any]:
    """The answer to ``{"action": "health"}`` (see the module doc and docs/health.md)."""
    sup = supervisor if supervisor is not None else Supervisor.from_env()
    cold = _settled_cold_start(settings)
    if not cold["ready"] and warming_up(settings):
        if sup.alive() is False:  # died while starting: the usual error, log tail and refresh
            raise recheck_unavailable(A1111Unavailable("A1111 is not running"), sup)
        a1111 = _starting(cold, sup)
    else:
        a1111 = _serving(settings, jobs.broken, None if cold["ready"] else last_failure(settings))
    reading, reason = gpu()
    return {"backend": settings.backend, **a1111, "cold_start": cold,
            "gpu": reading, "gpu_unavailable_reason": reason, "jobs": jobs.snapshot()}


def _settled_cold_start(settings: Settings) -> dict[str, Any]:
    """The cold-start phases once readiness is done or ``STARTING_GRACE_S`` has passed; polls
    without touching readiness's lock."""
    end = time.monotonic() + STARTING_GRACE_S
    cold = cold_start(settings)
    while not cold["ready"] and warming_up(settings) and time.monotonic() < end:
        time.sleep(_GRACE_POLL_S)
        cold = cold_start(settings)
    return cold


def _starting(cold: Mapping[str, Any], sup: Supervisor) -> dict[str, Any]:
    launched = sup.started_at()
    return {
        "status": "starting",
        "waiting_for": waiting_for(cold),
        "since_launch_s": None if launched is None else round(time.time() - launched, 1),
        "ping_ms": None,
        "checkpoint": None,
        "model": model_status(None, starting=True, broken=None),
        "memory": None,
    }


def _serving(settings: Settings, broken: str | None, start_failed: str | None) -> dict[str, Any]:
    client = state_for(settings).client
    t0 = time.monotonic()
    client.get("/sdapi/v1/sd-models")
    ping_ms = round((time.monotonic() - t0) * 1000, 1)
    options = client.get("/sdapi/v1/options")
    try:
        memory = client.get("/sdapi/v1/memory")
    except WorkerError as exc:
        memory = {"error": exc.message}
    raw = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
    checkpoint = str(raw) if raw else None
    return {
        "status": "ok",
        "ping_ms": ping_ms,
        "checkpoint": checkpoint,
        "model": model_status(checkpoint, starting=False, broken=broken, start_failed=start_failed),
        "memory": memory,
    }
