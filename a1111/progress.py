"""Progress of a running generation, forwarded to RunPod while the job runs.

While txt2img blocks, a background thread polls ``/sdapi/v1/progress`` (which A1111 serves
without its queue lock) and sends ``runpod.serverless.progress_update`` at most once per
``min_interval`` seconds, and only when something changed. Polling errors never reach the
job: progress is a courtesy, the generation is what matters.

    with ProgressReporter(client, job, label="final"):
        result = client.txt2img(payload, deadline=deadline)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.25
MIN_INTERVAL_S = 1.0
# Anything above this is not an estimate worth showing.
_MAX_ETA_S = 24 * 3600


def _default_send(job: dict, payload: dict) -> None:
    import runpod  # imported lazily: it costs ~1.4 s and configures logging

    runpod.serverless.progress_update(job, payload)


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
    """Context manager: poll A1111's progress in a thread, send throttled updates."""

    def __init__(
        self,
        client: Any,
        job: dict | str,
        *,
        send: Callable[[dict, dict], None] | None = None,
        label: str | None = None,
        poll_s: float = POLL_S,
        min_interval: float = MIN_INTERVAL_S,
    ) -> None:
        self._client = client
        self._job = job if isinstance(job, dict) else {"id": job}
        self._send = send or _default_send
        self._label = label
        self._poll_s = poll_s
        self._min_interval = min_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent: list[dict] = []  # what was sent, for logs and tests

    def __enter__(self) -> ProgressReporter:
        self._thread = threading.Thread(target=self._run, name=f"progress-{self._job.get('id')}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll_s + 5)

    def _run(self) -> None:
        last_sent_at = float("-inf")
        last_key: tuple | None = None
        while not self._stop.wait(self._poll_s):
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
                self._send(self._job, payload)
            except Exception as exc:  # noqa: BLE001
                log.debug("progress update not sent: %s", exc)
                continue
            self.sent.append(payload)
            last_sent_at, last_key = now, key
