"""Progress of a running generation, forwarded to RunPod while the job runs.

While txt2img blocks, a background thread polls ``/sdapi/v1/progress`` (which A1111 serves
without its queue lock) and sends ``runpod.serverless.progress_update`` at most once per
``min_interval`` seconds, and only when something changed. Polling errors never reach the
job: progress is a courtesy, the generation is what matters.

Polling is not free: on a CPU-bound A1111 each poll competes with the generation (every
0.25 s cost 3.5 % of a short job's time). So the first poll waits a whole ``poll_s`` (1 s:
a job that ends sooner needs no progress) and later ones come at most once per ``poll_s``.
Off the platform (the SDK's local test modes) nothing is polled or sent at all: the SDK
would POST each update to a placeholder URL and log an ERROR for it. The job's elapsed time
goes to the log at INFO every ``local_log_s`` seconds instead.

    with ProgressReporter(client, job, label="final"):
        result = client.txt2img(payload, deadline=deadline)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 1.0
MIN_INTERVAL_S = 1.0
LOCAL_LOG_S = 5.0
# Anything above this is not an estimate worth showing.
_MAX_ETA_S = 24 * 3600


_LOCAL_FLAGS = ("--test_input", "--rp_serve_api")


def on_platform(environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> bool:
    """True when RunPod's SDK would deliver a progress update to the platform. PURE given args.

    The SDK (runpod 1.x) fetches jobs from the platform only when ``RUNPOD_WEBHOOK_GET_JOB``
    is set and neither ``--test_input`` (one local job) nor ``--rp_serve_api`` (a local HTTP
    API) is on the command line; otherwise it runs the job itself, and there is nobody to
    tell. ``progress_update`` POSTs to ``RUNPOD_WEBHOOK_POST_OUTPUT``; unset, the SDK uses the
    placeholder "JOB_DONE_URL" and every update ends in "Failed to return job results".
    So: on the platform = both variables set and no local-mode flag.

    The flags are read from ``sys.orig_argv``: ``runpod.serverless.start`` removes the ones
    it recognises from ``sys.argv`` before the first job runs.
    """
    env = os.environ if environ is None else environ
    args = sys.orig_argv if argv is None else argv
    if not (env.get("RUNPOD_WEBHOOK_GET_JOB") and env.get("RUNPOD_WEBHOOK_POST_OUTPUT")):
        return False
    return not any(a == f or a.startswith(f + "=") for a in args for f in _LOCAL_FLAGS)


def _default_send(job: dict, payload: dict) -> None:
    import runpod  # imported lazily: it costs ~1.4 s and configures logging

    runpod.serverless.progress_update(job, payload)


_RUNPOD_SEND = _default_send


def _platform_send() -> Callable[[dict, dict], None] | None:
    """Where updates go when the caller names no ``send``: None means nowhere (local)."""
    if _default_send is not _RUNPOD_SEND:
        return _default_send  # replaced (tests capture updates this way): used wherever we run
    return _default_send if on_platform() else None


def progress_payload(raw: Any, label: str | None = None) -> dict | None:
    """Map one /sdapi/v1/progress answer to our update; None when no job is running. PURE."""
    if not isinstance(raw, dict):
        return None
    state = raw.get("state") if isinstance(raw.get("state"), dict) else {}
    job_count = state.get("job_count") or 0
    fraction = raw.get("progress") or 0.0
    if job_count == 0 and not fraction:
        return None  # idle: A1111 has not started our generation yet (or has finished)
    try:
        fraction = min(max(float(fraction), 0.0), 1.0)
    except (TypeError, ValueError):
        fraction = 0.0
    eta = raw.get("eta_relative")
    try:
        eta_s: float | None = round(float(eta), 1)
    except (TypeError, ValueError):
        eta_s = None
    step = int(state.get("sampling_step") or 0)
    # Before the first step is done A1111 extrapolates its ETA from almost nothing: the
    # recorded polls at step 0 of a 10-step job said 99.9 s, 348.6 s, 597.3 s.
    if eta_s is not None and (step == 0 or not 0 <= eta_s <= _MAX_ETA_S):
        eta_s = None
    payload: dict[str, Any] = {
        "step": step,
        "total": int(state.get("sampling_steps") or 0),
        "percent": round(fraction * 100, 1),
        "eta_s": eta_s,
    }
    if job_count and job_count > 1:  # batches (n_iter) and hires passes count as jobs
        payload["job"] = int(state.get("job_no") or 0) + 1
        payload["jobs"] = int(job_count)
    if label:
        payload["stage"] = label
    return payload


class ProgressReporter:
    """Context manager: poll A1111's progress in a thread, send throttled updates.

    ``send`` None: RunPod's ``progress_update`` on the platform, and off it no polling at
    all (see ``on_platform``), only a line at INFO every ``local_log_s`` seconds.
    """

    def __init__(
        self,
        client: Any,
        job: dict | str,
        *,
        send: Callable[[dict, dict], None] | None = None,
        label: str | None = None,
        poll_s: float = POLL_S,
        min_interval: float = MIN_INTERVAL_S,
        local_log_s: float = LOCAL_LOG_S,
    ) -> None:
        self._client = client
        self._job = job if isinstance(job, dict) else {"id": job}
        self._send = send if send is not None else _platform_send()
        self._label = label
        self._poll_s = poll_s
        self._min_interval = min_interval
        self._local_log_s = local_log_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0  # progress requests made, for the benchmark and tests
        self.sent: list[dict] = []  # what was sent, for logs and tests

    def __enter__(self) -> ProgressReporter:
        name = f"progress-{self._job.get('id')}"
        if self._send is None:
            self._thread = threading.Thread(target=self._log_locally, name=name, daemon=True)
        else:
            self._thread = threading.Thread(target=self._run, args=(self._send,), name=name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll_s + 5)

    def _log_locally(self) -> None:
        started = time.monotonic()
        stage = f" [{self._label}]" if self._label else ""
        while not self._stop.wait(self._local_log_s):
            log.info("job %s: generating%s, %.0f s so far", self._job.get("id"), stage, time.monotonic() - started)

    def _run(self, send: Callable[[dict, dict], None]) -> None:
        last_sent_at = float("-inf")
        last_key: tuple | None = None
        # The first poll too waits poll_s: a generation that ends within it costs no request.
        while not self._stop.wait(self._poll_s):
            self.polls += 1
            try:
                payload = progress_payload(self._client.progress(), self._label)
            except Exception as exc:  # noqa: BLE001 - progress must never break the job
                log.debug("progress poll failed: %s", exc)
                continue
            if payload is None:
                continue
            key = tuple(sorted(payload.items()))  # an ETA change alone is news too
            now = time.monotonic()
            if key == last_key or now - last_sent_at < self._min_interval:
                continue
            if self._stop.is_set():
                break  # the generation ended while we polled: a late update would mislead
            try:
                send(self._job, payload)
            except Exception as exc:  # noqa: BLE001
                log.debug("progress update not sent: %s", exc)
                continue
            self.sent.append(payload)
            last_sent_at, last_key = now, key
