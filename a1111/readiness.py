"""Is A1111 ready for a job?

Ready means, in order: the process start.sh launched is alive, ``/sdapi/v1/sd-models``
answers, the default checkpoint is loaded (``options.sd_model_checkpoint``), and one tiny
warm-up txt2img (64x64, 1 step) has run. The API answers seconds before the model has
loaded, and a txt2img sent meanwhile just waits, so the warm-up is the only proof that a
real job will run.

The sequence runs once, in a thread of its own (started at worker start by
``prewarm_in_background``, or by the first job), bounded by ``A1111_READY_TIMEOUT`` counted
from the moment A1111 was launched. Each job waits for that thread's outcome only until its
own deadline, then fails with ``timeout`` while the thread goes on for the next job; once
ready, later calls only check that the process is still alive (no HTTP). A dead A1111
fails the job at once, with the tail of its log, and asks RunPod to recycle the worker.
The cold-start phases are logged and kept for ``health``; ``phase_now`` says what is awaited.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from a1111.client import is_out_of_memory
from a1111.state import ReadyState, state_for
from a1111.supervisor import Supervisor
from schemas.errors import A1111ProcessDied, A1111Unavailable, JobTimeout, OutOfMemory
from schemas.settings import Settings

log = logging.getLogger(__name__)

# Connection refused comes back in well under a millisecond, so polling this often costs
# nothing and lets the worker notice a freshly started server within a few milliseconds.
API_POLL_S = 0.005
MODEL_POLL_S = 0.05
ALIVE_CHECK_S = 0.05  # reading the pid file and /proc costs more than a refused connect
# Once the deadline has passed, a job still gets this long to find A1111 ready
# (it may have finished loading since), instead of failing without a look.
LATE_GRACE_S = 3.0
_PROBE_TIMEOUT = (0.5, 5.0)

WARMUP_PAYLOAD: dict[str, Any] = {
    "prompt": "warm-up",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "steps": 1,
    "cfg_scale": 1.0,
    "seed": 1,
    "batch_size": 1,
    "n_iter": 1,
    "sampler_name": "Euler",
    "send_images": False,
    "save_images": False,
    "do_not_save_samples": True,
    "do_not_save_grid": True,
}


def cold_start(settings: Settings) -> dict[str, Any]:
    """The cold-start phases measured so far (for the health action)."""
    st = state_for(settings).readiness
    return {"ready": st.ready, **st.cold.as_dict()}


def phase_now(settings: Settings) -> str:
    """What readiness is doing now, without waiting or any HTTP: "ready", the phase the
    warm-up waits for ("API answering", "default checkpoint loaded", "warm-up generation"),
    or "not waiting" (nothing started yet, or the last wait failed; the next job retries)."""
    st = state_for(settings).readiness
    if st.ready:
        return "ready"
    attempt = st.attempt
    return attempt.phase if isinstance(attempt, _Attempt) else "not waiting"


@dataclass
class _Attempt:
    """One run of the readiness sequence, in a thread of its own and bounded only by
    A1111_READY_TIMEOUT: jobs wait for its outcome up to their own deadlines, so a job that
    gives up never cuts short a probe or the warm-up txt2img that the next job needs."""

    done: threading.Event = field(default_factory=threading.Event)
    phase: str = "API answering"
    error: BaseException | None = None
    thread: threading.Thread | None = None


def ensure_ready(settings: Settings, supervisor: Supervisor | None = None, *,
                 deadline: float | None = None) -> None:
    """Return when A1111 is ready; raise A1111Unavailable otherwise (see module doc).

    ``deadline`` (a ``time.monotonic()`` value) is the job's own time limit: reaching it
    first fails the job with JobTimeout while the wait goes on for the next job. The probes
    use their own HTTP session with short timeouts and no retries, not the job's client,
    because polling must be fast and cheap.
    """
    sup = supervisor if supervisor is not None else Supervisor.from_env()
    st = state_for(settings).readiness
    if st.ready:
        _check_alive(sup)
        return
    attempt = _start_attempt(st, settings, sup)
    if attempt is None:  # became ready meanwhile
        return
    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    if not attempt.done.wait(left):
        raise _still_starting(settings, sup, st, attempt)
    if attempt.error is not None:
        raise attempt.error


def _start_attempt(st: ReadyState, settings: Settings, sup: Supervisor) -> _Attempt | None:
    """The attempt in progress, or a new one started now; None when A1111 is ready."""
    with st.lock:
        if st.ready:
            return None
        if isinstance(st.attempt, _Attempt):
            return st.attempt
        attempt = _Attempt()
        attempt.thread = threading.Thread(target=_run_attempt, args=(st, settings, sup, attempt),
                                          name="a1111-readiness", daemon=True)
        st.attempt = attempt
        attempt.thread.start()
        return attempt


def _run_attempt(st: ReadyState, settings: Settings, sup: Supervisor, attempt: _Attempt) -> None:
    try:
        _wait_until_ready(st, settings, sup, attempt)
    except Exception as exc:  # noqa: BLE001 - handed to every job that waits on this attempt
        attempt.error = exc
        st.last_failure = str(getattr(exc, "message", None) or _short(exc))[:300]
        log.warning("A1111 not ready: %s", getattr(exc, "message", exc))
    else:
        st.last_failure = None
    finally:
        # Cleared before done is set: a job that sees a failure and asks again starts afresh.
        with st.lock:
            if st.attempt is attempt:
                st.attempt = None
        attempt.done.set()


def _still_starting(settings: Settings, sup: Supervisor, st: ReadyState, attempt: _Attempt) -> JobTimeout:
    launched = sup.started_at() or st.first_call
    since = f", {time.time() - launched:.1f} s after its launch" if launched else ""
    seen = [name for name, v in (("API up", st.cold.api_up_s), ("model loaded", st.cold.model_loaded_s))
            if v is not None]
    return JobTimeout(
        f"the job reached its time limit (JOB_TIMEOUT={settings.job_timeout_s:g} s) while A1111 was still "
        f"starting (waiting for: {attempt.phase}{since}; done so far: {', '.join(seen) or 'nothing'}); "
        f"the worker keeps starting it (up to A1111_READY_TIMEOUT={settings.ready_timeout_s:g} s), "
        "so a later job can use it"
    )


def _check_alive(sup: Supervisor) -> None:
    if sup.alive() is False:
        raise _died(sup, "A1111 is no longer running")


def _died(sup: Supervisor, what: str) -> A1111ProcessDied:
    tail = sup.log_tail()
    log.error("%s; last lines of its log:\n%s", what, "\n".join(tail))
    return A1111ProcessDied(
        f"{what}; the worker will be restarted (log_tail holds the end of A1111's log).",
        log_tail=tail,
    )


def _ready_deadline(st: ReadyState, settings: Settings, sup: Supervisor) -> tuple[float, float, bool]:
    """(monotonic deadline, wall-clock reference the phases are timed from, already late)."""
    now_wall = time.time()
    launched = sup.started_at()
    if launched is None:
        if st.first_call is None:
            st.first_call = now_wall
        launched_ref = st.first_call
    else:
        launched_ref = launched
    st.cold.launched_at = launched
    deadline_wall = launched_ref + settings.ready_timeout_s
    late = now_wall >= deadline_wall
    return time.monotonic() + (LATE_GRACE_S if late else deadline_wall - now_wall), launched_ref, late


def _wait_until_ready(st: ReadyState, settings: Settings, sup: Supervisor, attempt: _Attempt) -> None:
    deadline, launched_ref, late = _ready_deadline(st, settings, sup)
    url = settings.a1111_url
    last_error = "no answer yet"
    with requests.Session() as http:
        http.trust_env = False  # never route loopback calls through a proxy from the env
        try:
            models = _poll_api(http, url, sup, deadline, st)
            _mark(st, "api_up", launched_ref)
            if not models:
                # A fresh volume may hold no checkpoint yet: the job that names one will
                # download it and A1111 loads it then. Nothing to warm up until that happens.
                st.cold.no_checkpoint = True
                log.warning("A1111 lists no checkpoint yet; ready without warm-up")
            else:
                attempt.phase = "default checkpoint loaded"
                _poll_model(http, url, sup, deadline, st)
                _mark(st, "model_loaded", launched_ref)
                attempt.phase = "warm-up generation"
                _warm_up(http, url, sup, deadline)
                _mark(st, "warm", launched_ref)
        except _NotYet as exc:
            last_error = str(exc) or last_error
            raise _not_ready(settings, sup, attempt.phase, last_error, late) from None
    st.ready = True
    c = st.cold
    log.info(
        "A1111 ready: API up %s, model loaded %s, warm %s (seconds after %s)",
        _fmt(c.api_up_s), _fmt(c.model_loaded_s), _fmt(c.warm_s),
        "process start" if c.launched_at is not None else "first job",
    )


class _NotYet(Exception):
    """The deadline passed before a phase completed (message: the last error seen)."""


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def _mark(st: ReadyState, phase: str, launched_ref: float) -> None:
    st.cold.noticed_at[phase] = time.monotonic()
    setattr(st.cold, f"{phase}_s", round(time.time() - launched_ref, 3))


def _not_ready(settings: Settings, sup: Supervisor, phase: str, last_error: str, late: bool) -> A1111Unavailable:
    when = "is still not ready" if late else "did not become ready"
    msg = (
        f"A1111 {when} within A1111_READY_TIMEOUT={settings.ready_timeout_s:g} s "
        f"(waiting for: {phase}; last error: {last_error})."
    )
    log.error(msg)
    tail = sup.log_tail()
    return A1111Unavailable(msg, log_tail=tail) if tail else A1111Unavailable(msg)


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _timeout(deadline: float, read: float) -> tuple[float, float]:
    left = max(_remaining(deadline), 0.05)
    return (min(_PROBE_TIMEOUT[0], left), min(read, left))


def _forgotten(st: ReadyState, url: str) -> bool:
    # reset_worker_state() made a new state for this URL: a later server may reuse the port
    # and must not get this stale wait's probes or warm-up.
    return state_for(url).readiness is not st


def _poll_api(http: requests.Session, url: str, sup: Supervisor, deadline: float, st: ReadyState) -> list:
    # While nothing listens, a bare TCP connect is refused in microseconds; the HTTP probe
    # (a few hundred microseconds of CPU in requests) runs only once the port accepts. That
    # keeps a 5 ms poll at a few percent of one core while A1111 imports torch next door.
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))
    last = "no answer yet"
    next_alive_check = 0.0
    while True:
        now = time.monotonic()
        if now >= next_alive_check:
            if sup.alive() is False:
                raise _died(sup, "A1111 exited during start-up")
            if _forgotten(st, url):
                raise _NotYet("the worker's state was reset")
            next_alive_check = now + ALIVE_CHECK_S
        if _port_open(address, deadline):
            try:
                resp = http.get(f"{url}/sdapi/v1/sd-models", timeout=_timeout(deadline, _PROBE_TIMEOUT[1]))
                if resp.status_code == 200:
                    body = resp.json()
                    return body if isinstance(body, list) else []
                last = f"GET /sdapi/v1/sd-models answered HTTP {resp.status_code}"
            except (requests.RequestException, ValueError) as exc:
                last = _short(exc)
        else:
            last = f"nothing accepts connections on {address[0]}:{address[1]} yet (connection refused)"
        if _remaining(deadline) <= 0:
            raise _NotYet(last)
        time.sleep(min(API_POLL_S, max(_remaining(deadline), 0)))


def _port_open(address: tuple[str, int], deadline: float) -> bool:
    try:
        with socket.create_connection(address, timeout=min(_PROBE_TIMEOUT[0], max(_remaining(deadline), 0.05))):
            return True
    except OSError:
        return False


def _poll_model(http: requests.Session, url: str, sup: Supervisor, deadline: float, st: ReadyState) -> str:
    last = "sd_model_checkpoint not set"
    while True:
        if sup.alive() is False:
            raise _died(sup, "A1111 exited while loading the checkpoint")
        if _forgotten(st, url):
            raise _NotYet("the worker's state was reset")
        try:
            resp = http.get(f"{url}/sdapi/v1/options", timeout=_timeout(deadline, _PROBE_TIMEOUT[1]))
            if resp.status_code == 200:
                ckpt = (resp.json() or {}).get("sd_model_checkpoint")
                if ckpt:
                    return str(ckpt)
            else:
                last = f"GET /sdapi/v1/options answered HTTP {resp.status_code}"
        except (requests.RequestException, ValueError, AttributeError) as exc:
            last = _short(exc)
        if _remaining(deadline) <= 0:
            raise _NotYet(last)
        time.sleep(min(MODEL_POLL_S, max(_remaining(deadline), 0)))


def _warm_up(http: requests.Session, url: str, sup: Supervisor, deadline: float) -> None:
    # One request, no retry: a txt2img is never re-sent (A1111 may already be running it).
    # If the process dies meanwhile, the connection drops and we report the death.
    if _remaining(deadline) <= 0:
        raise _NotYet("no time left for the warm-up generation")
    t0 = time.monotonic()
    try:
        resp = http.post(f"{url}/sdapi/v1/txt2img", json=WARMUP_PAYLOAD, timeout=_timeout(deadline, 1e9))
    except requests.RequestException as exc:
        if sup.alive() is False:
            raise _died(sup, "A1111 exited during the warm-up generation") from None
        raise _NotYet(f"warm-up txt2img: {_short(exc)}") from None
    if resp.status_code != 200:
        body = _body(resp)
        text = f"{body.get('errors', '')} {body.get('message', '')}"
        if is_out_of_memory(str(body.get("error", "")), text):
            raise OutOfMemory("CUDA ran out of memory during the warm-up generation; the worker will be restarted.")
        detail = " ".join(str(body.get(k) or "") for k in ("error", "errors", "message", "detail")).strip()
        raise A1111Unavailable(
            f"A1111's warm-up generation failed with HTTP {resp.status_code}"
            + (f" ({detail[:300]})" if detail else "")
            + "; check that the default checkpoint loads (log_tail holds the end of A1111's log).",
            log_tail=sup.log_tail(),
        )
    log.info("warm-up txt2img done in %.2fs", time.monotonic() - t0)


def _body(resp: requests.Response) -> dict:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def recheck_unavailable(exc: A1111Unavailable, supervisor: Supervisor | None = None) -> A1111Unavailable:
    """A1111 stopped answering mid-job: if its process is gone, say so (log tail, recycle the
    worker); if it is alive, keep the error as it is (a slow or busy A1111 is not broken)."""
    if isinstance(exc, A1111ProcessDied):
        return exc
    sup = supervisor if supervisor is not None else Supervisor.from_env()
    if sup.alive() is False:
        return _died(sup, "A1111 is no longer running")
    return exc


def prewarm_in_background(settings: Settings) -> threading.Thread:
    """Start the readiness sequence at worker start, so the first job does not pay the warm-up;
    returns the thread that waits (jobs that come meanwhile wait on the same one). Failures
    are only logged here: the next job starts the sequence again and reports them."""
    attempt = _start_attempt(state_for(settings).readiness, settings, Supervisor.from_env())
    if attempt is None or attempt.thread is None:  # already ready: nothing to wait for
        thread = threading.Thread(target=lambda: None, name="a1111-prewarm", daemon=True)
        thread.start()
        return thread
    return attempt.thread


def warming_up(settings: Settings) -> bool:
    """True while a readiness attempt is under way; the health action reads it so that it
    answers at once instead of waiting for the attempt."""
    return phase_now(settings) not in ("ready", "not waiting")


def last_failure(settings: Settings) -> str | None:
    """Why the worker's last readiness attempt failed (None before any, or once one succeeded)."""
    return state_for(settings).readiness.last_failure
