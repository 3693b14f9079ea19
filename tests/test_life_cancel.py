"""Timeouts, cancellation and progress through the real handler, against the replay server.

The replay server answers txt2img slowly (``delay``) while /sdapi/v1/progress advances; a
POST /sdapi/v1/interrupt makes the slow txt2img answer at once with the recorded
interrupted response (200 with a half-done image, as A1111 does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

import handler
from a1111 import progress as progress_mod

ROOT = Path(__file__).resolve().parent.parent
JOB_INPUT = json.loads((ROOT / "test_input.json").read_text())["input"]
TXT2IMG = "/sdapi/v1/txt2img"
INTERRUPT = "/sdapi/v1/interrupt"


def _job(job_id: str) -> dict:
    return {"id": job_id, "input": dict(JOB_INPUT)}


def _interrupts(replay) -> list:
    return [r for r in replay.requests if r.method == "POST" and r.path == INTERRUPT]


def _wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def sent_progress(monkeypatch):
    """Collect what would go to runpod.serverless.progress_update."""
    sent: list[tuple[dict, dict]] = []
    monkeypatch.setattr(progress_mod, "_default_send", lambda job, payload: sent.append((job, payload)))
    return sent


def test_a_normal_job_succeeds(worker_env):
    result = handler.handler(_job("ok"))
    assert "error" not in result, result
    assert result["images"]


@pytest.mark.slow
def test_timed_out_job_interrupts_a1111_and_the_next_job_succeeds(worker_env, monkeypatch, sent_progress):
    replay = worker_env
    assert "error" not in handler.handler(_job("warm"))  # readiness + warm-up done without delay
    monkeypatch.setenv("JOB_TIMEOUT", "2.5")
    replay.delay("POST", TXT2IMG, 20)
    t0 = time.monotonic()
    result = handler.handler(_job("slow"))
    took = time.monotonic() - t0
    assert result["error_type"] == "timeout", result
    assert "images" not in result  # the half-done image A1111 returns after an interrupt is not a result
    assert 2.0 <= took < 6.0
    assert len(_interrupts(replay)) == 1
    # progress was reported while it ran (about 1 per second)
    assert 1 <= len([p for j, p in sent_progress if j["id"] == "slow"]) <= 4

    replay.delay("POST", TXT2IMG, 0)
    result = handler.handler(_job("next"))
    assert "error" not in result, result
    assert result["images"]


@pytest.mark.slow
def test_cancel_interrupts_a1111_at_once_and_the_worker_stays_usable(worker_env, caplog):
    replay = worker_env
    assert "error" not in handler.handler(_job("warm"))
    replay.delay("POST", TXT2IMG, 20)
    caplog.set_level(logging.INFO)
    before = len(replay.sent("POST", TXT2IMG))  # the warm-up generation and job "warm"

    async def scenario() -> float:
        task = asyncio.create_task(handler.async_handler(_job("to-cancel")))
        await asyncio.to_thread(_wait_for, lambda: len(replay.sent("POST", TXT2IMG)) == before + 1)
        await asyncio.sleep(0.3)  # the generation is under way
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # re-raised: RunPod records the job as cancelled, not completed
        return time.monotonic() - t0

    cancel_took = asyncio.run(scenario())
    assert cancel_took < 2.0  # the cancel landed while A1111 was still generating
    assert len(_interrupts(replay)) == 1

    # The next job runs once the cancelled job's thread has wound down, and succeeds.
    replay.delay("POST", TXT2IMG, 0)
    result = asyncio.run(handler.async_handler(_job("after-cancel")))
    assert "error" not in result, result
    assert len(replay.sent("POST", TXT2IMG)) == before + 2
    # The cancelled job's own txt2img got the interrupted 200 and did not pass it off as a success.
    assert any("to-cancel" in r.getMessage() and "timeout" in r.getMessage() for r in caplog.records)


def test_async_handler_returns_errors_like_the_sync_one(worker_env):
    result = asyncio.run(handler.async_handler({"id": "bad", "input": {"prompt": "x", "steps": 500}}))
    assert result["error_type"] == "validation"
    assert "refresh_worker" not in result  # bad input never recycles the worker


@pytest.mark.slow
def test_cancel_before_generation_means_no_generation(worker_env):
    replay = worker_env
    # Name resolution is slow this once (a stalled list route), so the cancel lands before txt2img.
    replay.fault("GET", "/sdapi/v1/samplers", "stall", seconds=1.5, times=1)

    async def scenario() -> None:
        task = asyncio.create_task(handler.async_handler(_job("cancel-early")))
        await asyncio.to_thread(_wait_for, lambda: any(r.path == "/sdapi/v1/samplers" for r in replay.requests))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    result = asyncio.run(handler.async_handler(_job("after")))  # waits for the cancelled job's thread
    assert "error" not in result, result
    prompts = [b["prompt"] for b in replay.sent("POST", TXT2IMG)]
    assert prompts.count(JOB_INPUT["prompt"]) == 1  # only job "after" generated
