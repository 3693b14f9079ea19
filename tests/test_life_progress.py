"""ProgressReporter (a1111/progress.py): throttled progress updates during a slow generation.

The replay server answers txt2img slowly (``delay``) while /sdapi/v1/progress advances
through the recorded mid-generation polls; updates go to a recording ``send``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from a1111.progress import ProgressReporter, on_platform, progress_payload
from tests.replay import ReplayServer
from tests.support.worker import child_env

ROOT = Path(__file__).resolve().parent.parent
REC = Path(__file__).parent / "recordings" / "a1111"


def _recorded(name: str) -> dict:
    return json.loads((REC / f"{name}.json").read_text())["response"]["json"]


class _ProgressOnly:
    """The one call ProgressReporter makes, over real HTTP (A1111Client.progress's contract)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def progress(self) -> dict:
        return requests.get(f"{self.url}/sdapi/v1/progress", timeout=5).json()


def test_payload_from_recorded_mid_generation_poll():
    p = progress_payload(_recorded("get_progress_mid_generation_4"))
    assert p == {"step": 1, "total": 10, "percent": 11.0, "eta_s": 69.1}


def test_payload_is_none_when_idle_or_garbage():
    assert progress_payload(_recorded("get_progress_idle")) is None
    assert progress_payload(_recorded("get_progress_after_interrupt_idle")) is None
    assert progress_payload("<html>") is None
    assert progress_payload(None) is None


def test_payload_labels_the_stage():
    p = progress_payload(_recorded("get_progress_mid_generation_1"), label="final")
    assert p["stage"] == "final" and p["step"] == 0 and p["total"] == 10


@pytest.mark.slow
def test_updates_are_sent_during_a_slow_generation_at_most_once_per_second(replay):
    replay.delay("POST", "/sdapi/v1/txt2img", 4.0)
    sent: list[tuple[float, dict, dict]] = []
    job = {"id": "job-progress", "input": {}}

    def send(j: dict, payload: dict) -> None:
        sent.append((time.monotonic(), j, payload))

    with ProgressReporter(_ProgressOnly(replay.url), job, send=send, poll_s=0.05):
        resp = requests.post(f"{replay.url}/sdapi/v1/txt2img", json={"prompt": "x"}, timeout=30)
    assert resp.status_code == 200

    # The replayed polls hold step 0 for 3 s (identical updates are not re-sent), then step 1.
    assert [p["step"] for _, _, p in sent] == [0, 1], sent
    assert all(j is job for _, j, _ in sent)
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= 0.95, gaps
    steps = [p["step"] for _, _, p in sent]
    assert steps == sorted(steps)
    assert {p["total"] for _, _, p in sent} == {10}
    assert all(set(p) >= {"step", "total", "percent", "eta_s"} for _, _, p in sent)


def test_no_update_after_the_reporter_exits_and_errors_never_escape(replay):
    replay.delay("POST", "/sdapi/v1/txt2img", 1.5)
    calls: list[dict] = []

    def failing_send(job: dict, payload: dict) -> None:
        calls.append(payload)
        raise RuntimeError("RunPod unreachable")

    t = threading.Thread(target=lambda: requests.post(f"{replay.url}/sdapi/v1/txt2img", json={}, timeout=30))
    t.start()
    rep = ProgressReporter(_ProgressOnly(replay.url), "job-x", send=failing_send, poll_s=0.05)
    with rep:
        time.sleep(0.5)
    n = len(calls)
    assert n >= 1  # it tried, the error stayed inside the reporter
    time.sleep(0.4)
    assert len(calls) == n  # stopped with the context
    t.join()


def test_progress_poll_errors_do_not_break_the_job(replay):
    replay.fault("GET", "/sdapi/v1/progress", "drop")
    sent: list[dict] = []
    with ProgressReporter(_ProgressOnly(replay.url), "job-y", send=lambda j, p: sent.append(p), poll_s=0.05):
        time.sleep(0.3)
    assert sent == []
    assert len([r for r in replay.requests if r.path == "/sdapi/v1/progress"]) >= 2


def test_no_eta_before_the_first_step():
    # Recorded: at step 0 A1111's eta_relative is an extrapolation from nothing (99.9 s).
    assert progress_payload(_recorded("get_progress_mid_generation_1"))["eta_s"] is None


def test_throttle_is_at_most_one_update_per_second():
    # A progress source that advances on every poll (20 ms apart): updates still come at most
    # once a second. Built from the recorded poll shape, with the step counted up.
    base = _recorded("get_progress_mid_generation_4")

    class Advancing:
        step = 0

        def progress(self) -> dict:
            self.step += 1
            return {**base, "state": {**base["state"], "sampling_step": self.step, "sampling_steps": 10_000}}

    times: list[float] = []
    with ProgressReporter(Advancing(), "job-z", send=lambda j, p: times.append(time.monotonic()), poll_s=0.02):
        time.sleep(2.6)
    assert len(times) == 3, times  # at about 0 s, 1 s and 2 s
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))


# --------------------------------------------------------------------------- cost of polling
PROGRESS = "/sdapi/v1/progress"


def _polls(replay) -> list[float]:
    """When each progress request reached the server (monotonic, this process's clock)."""
    return [r.at for r in replay.requests if r.path == PROGRESS]


def _generate(replay, seconds: float, **kwargs) -> tuple[float, list[dict]]:
    """One txt2img the server holds ``seconds``, under a ProgressReporter with its defaults."""
    replay.delay("POST", "/sdapi/v1/txt2img", seconds)
    sent: list[dict] = []
    kwargs.setdefault("send", lambda j, p: sent.append(p))
    t0 = time.monotonic()
    with ProgressReporter(_ProgressOnly(replay.url), {"id": "job-cost", "input": {}}, **kwargs):
        resp = requests.post(f"{replay.url}/sdapi/v1/txt2img", json={"prompt": "x"}, timeout=30)
    assert resp.status_code == 200
    return t0, sent


def test_a_generation_under_a_second_sends_no_poll(replay):
    _, sent = _generate(replay, 0.8)
    assert _polls(replay) == [] and sent == []


@pytest.mark.slow
def test_a_3_5_s_generation_polls_at_most_once_a_second_after_the_first(replay):
    t0, sent = _generate(replay, 3.5)
    polls = _polls(replay)
    assert 1 <= len(polls) <= 4, polls
    assert polls[0] - t0 >= 1.0
    assert all(b - a >= 0.95 for a, b in zip(polls, polls[1:], strict=False)), polls
    assert sent and sent[0]["total"] == 10  # the polls that were made still report progress


@pytest.mark.parametrize(("env", "argv"), [
    ({}, ["handler.py"]),  # the README's quick start and plain `python handler.py`
    ({"RUNPOD_WEBHOOK_GET_JOB": "http://x/get", "RUNPOD_WEBHOOK_POST_OUTPUT": "http://x/out"},
     ["handler.py", "--test_input", "{}"]),
    ({"RUNPOD_WEBHOOK_GET_JOB": "http://x/get", "RUNPOD_WEBHOOK_POST_OUTPUT": "http://x/out"},
     ["handler.py", "--rp_serve_api", "--rp_api_port", "8000"]),
    ({"RUNPOD_WEBHOOK_GET_JOB": "http://x/get"}, ["handler.py"]),  # updates would go to "JOB_DONE_URL"
])
def test_local_modes_are_not_the_platform(env, argv):
    assert on_platform(env, argv) is False


def test_the_platform_is_both_webhooks_and_no_local_flag():
    env = {"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/e/job-take/$RUNPOD_POD_ID",
           "RUNPOD_WEBHOOK_POST_OUTPUT": "https://api.runpod.ai/v2/e/job-done/$RUNPOD_POD_ID/$ID"}
    assert on_platform(env, ["handler.py"]) is True
    assert on_platform(env, ["handler.py", "--test_input={}"]) is False


def test_local_mode_polls_nothing_sends_nothing_and_logs_elapsed_time(replay, monkeypatch, caplog):
    for name in ("RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_POST_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO, logger="a1111.progress")
    replay.delay("POST", "/sdapi/v1/txt2img", 1.2)
    with ProgressReporter(_ProgressOnly(replay.url), "job-local", poll_s=0.05, local_log_s=0.5) as rep:
        requests.post(f"{replay.url}/sdapi/v1/txt2img", json={}, timeout=30)
    assert _polls(replay) == [] and rep.sent == [] and rep.polls == 0
    lines = [r.getMessage() for r in caplog.records if "job-local" in r.getMessage()]
    assert len(lines) == 2 and all(r.levelno == logging.INFO for r in caplog.records), lines


@pytest.mark.slow
@pytest.mark.parametrize("webhooks", [False, True], ids=["no-env", "webhooks-set"])
def test_a_local_test_input_run_polls_nothing_and_logs_no_sdk_error(tmp_path, webhooks):
    """``handler.py --test_input`` (the SDK's local mode) against the replay server with a
    2.5 s txt2img. With ``webhooks`` the platform's variables are set too, pointing at the
    replay server, so an update the SDK sent anyway would be recorded there."""
    with ReplayServer("a1111") as srv:
        srv.delay("POST", "/sdapi/v1/txt2img", 2.5)
        extra = {"RUNPOD_WEBHOOK_GET_JOB": f"{srv.url}/job-take",
                 "RUNPOD_WEBHOOK_POST_OUTPUT": f"{srv.url}/job-done?id=$ID"} if webhooks else {}
        job = {"input": {"prompt": "a photo of a cat", "sampler_name": "Euler", "steps": 1}}
        out = subprocess.run(
            [sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=ROOT, capture_output=True,
            text=True, timeout=120,
            env=child_env(A1111_URL=srv.url, MODELS_DIR=str(tmp_path / "models"), A1111_STATE_DIR=str(tmp_path / "s"),
                          MODELS_CATALOG=str(tmp_path / "none.json"), A1111_READY_TIMEOUT="30", **extra))
        logs = out.stdout + out.stderr
        assert out.returncode == 0, logs[-2000:]
        assert "completed successfully" in logs
        assert "Failed to return job results" not in logs
        assert _polls(srv) == []
        assert [r.path for r in srv.requests if r.path.startswith("/job-")] == []
