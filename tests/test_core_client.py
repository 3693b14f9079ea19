"""a1111/client.py over real HTTP: recorded error bodies, timeouts, interrupts, safe retries.

Fault injection is said where it is used: a dropped connection, a stalled answer, and one
simulated CUDA out-of-memory 500 built from a recorded 500 body (no recording has an OOM).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from a1111.client import A1111Client, map_error
from handler import handler
from schemas.errors import A1111Error, A1111Unavailable, JobTimeout, OutOfMemory, error_result
from tests.replay import ReplayServer, recordings
from tests.support.ports import free_port
from tests.support.worker import start_worker, stop_and_check

TXT2IMG = "/sdapi/v1/txt2img"
PAYLOAD = {"prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 1}


@pytest.fixture(params=["a1111", "forge"])
def srv(request):
    with ReplayServer(request.param) as server:
        yield server


def client_for(srv: ReplayServer, **kw) -> A1111Client:
    return A1111Client(srv.url, **kw)


def test_txt2img_ok(srv):
    out = client_for(srv).txt2img(PAYLOAD)
    assert out["images"] == srv.recording("txt2img_minimal")["response"]["json"]["images"]
    assert srv.sent("POST", TXT2IMG) == [PAYLOAD]


def test_422_validation_bodies_of_both_servers(srv):
    srv.respond("POST", TXT2IMG, "txt2img_wrong_types_422")
    with pytest.raises(A1111Error) as info:
        client_for(srv).txt2img({**PAYLOAD, "steps": "abc"})
    assert info.value.details[0]["field"] == "steps"
    assert "HTTP 422" in info.value.message and "steps" in info.value.message
    # pydantic v1 (A1111) says "value is not a valid integer", v2 (Forge) "Input should be a valid integer"
    assert "integer" in info.value.details[0]["message"]


def test_500_bodies_of_both_servers(srv):
    name = "txt2img_steps_0" if srv.backend == "forge" else "txt2img_steps_0_500"
    srv.respond("POST", TXT2IMG, name)
    with pytest.raises(A1111Error) as info:
        client_for(srv).txt2img({**PAYLOAD, "steps": 0})
    # A1111 puts the text under "errors", Forge under "message": both reach the caller.
    assert "ZeroDivisionError" in info.value.message and "division" in info.value.message
    assert error_result(info.value)["error_type"] == "a1111_error"


def test_http_exception_bodies(srv):
    srv.respond("POST", TXT2IMG, "txt2img_bad_script_name")
    with pytest.raises(A1111Error) as info:
        client_for(srv).txt2img({**PAYLOAD, "script_name": "no such script"})
    assert "not found" in info.value.message and "HTTP 422" in info.value.message


def test_out_of_memory_is_its_own_error(srv):
    # Simulated: the recorded 500 shape of this backend, with the text torch raises on CUDA OOM.
    name = "txt2img_steps_0" if srv.backend == "forge" else "txt2img_steps_0_500"
    body = srv.recording(name)["response"]["json"]
    text_key = "message" if srv.backend == "forge" else "errors"
    body.update({"error": "OutOfMemoryError", text_key: "CUDA out of memory. Tried to allocate 2.00 GiB"})
    srv.fault("POST", TXT2IMG, "status", status=500, body=body)
    with pytest.raises(OutOfMemory) as info:
        client_for(srv).txt2img(PAYLOAD)
    result = error_result(info.value)
    assert result["error_type"] == "out_of_memory" and result["refresh_worker"] is True


def test_dropped_txt2img_is_not_sent_twice(srv):
    srv.fault("POST", TXT2IMG, "drop")
    with pytest.raises(A1111Unavailable):
        client_for(srv).txt2img(PAYLOAD)
    assert len(srv.sent("POST", TXT2IMG)) == 1


def test_get_is_retried_after_a_dropped_connection(srv):
    srv.fault("GET", "/sdapi/v1/samplers", "drop", times=1)
    samplers = client_for(srv).get("/sdapi/v1/samplers")
    assert samplers[0]["name"] == "DPM++ 2M"
    assert len([r for r in srv.requests if r.path == "/sdapi/v1/samplers"]) == 2


def test_not_json_answer(srv):
    srv.fault("GET", "/sdapi/v1/options", "garbage")
    with pytest.raises(A1111Error, match="not JSON"):
        client_for(srv).get("/sdapi/v1/options")


def test_unknown_route(srv):
    with pytest.raises(A1111Error, match="no route"):
        client_for(srv).get("/sdapi/v1/does-not-exist")


def test_stalled_get_times_out(srv):
    srv.fault("GET", "/sdapi/v1/options", "stall", seconds=2)
    t0 = time.monotonic()
    with pytest.raises(A1111Unavailable, match="did not answer"):
        client_for(srv, read_timeout=0.3).get("/sdapi/v1/options")
    assert time.monotonic() - t0 < 1.9


def test_connection_refused_is_unavailable_after_retries():
    port = free_port()  # a port nobody listens on
    client = A1111Client(f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(A1111Unavailable, match="not answering"):
        client.get("/sdapi/v1/sd-models")
    with pytest.raises(A1111Unavailable):
        client.txt2img(PAYLOAD)  # refused before sending: safe, and still a clear error
    assert time.monotonic() - t0 < 5


def test_deadline_interrupts_and_times_out(srv):
    srv.delay("POST", TXT2IMG, 5)
    t0 = time.monotonic()
    with pytest.raises(JobTimeout):
        client_for(srv).txt2img(PAYLOAD, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 3
    assert len(srv.sent("POST", "/sdapi/v1/interrupt")) == 1


def test_deadline_already_passed_sends_nothing(srv):
    with pytest.raises(JobTimeout):
        client_for(srv).txt2img(PAYLOAD, deadline=time.monotonic() - 1)
    assert srv.sent("POST", TXT2IMG) == []


def test_an_interrupted_generation_is_never_a_success(srv):
    # A cancel (another thread calls interrupt) makes A1111 answer 200 with a partial image.
    srv.delay("POST", TXT2IMG, 5)
    client = client_for(srv)
    threading.Timer(0.3, client.interrupt).start()
    with pytest.raises(JobTimeout, match="interrupted"):
        client.txt2img(PAYLOAD)
    assert len(srv.sent("POST", "/sdapi/v1/interrupt")) == 1
    # the next generation on the same client is not affected
    srv.delay("POST", TXT2IMG, 0)
    assert client.txt2img(PAYLOAD)["images"]


@pytest.mark.parametrize("backend", ["a1111", "forge"])
def test_handler_job_timeout(backend, monkeypatch, tmp_path, models_dir):
    srv = start_worker(backend, monkeypatch, tmp_path, models_dir)
    try:
        monkeypatch.setenv("JOB_TIMEOUT", "1")
        srv.delay("POST", TXT2IMG, 5)
        out = handler({"id": "t", "input": {"prompt": "a cat", "steps": 1}})
        assert out["error_type"] == "timeout", out
        assert "images" not in out
        assert len(srv.sent("POST", "/sdapi/v1/interrupt")) == 1
    finally:
        stop_and_check(srv)


@pytest.mark.parametrize("folder", ["a1111", "forge"])
def test_every_recorded_error_body_maps_to_one_clear_error(folder):
    seen = 0
    for name, rec in recordings(folder).items():
        status = rec["response"]["status"]
        if status < 400 or "json" not in rec["response"]:
            continue
        req = rec["request"]
        err = map_error(req["method"], req["path"], status, rec["response"]["json"])
        assert err.message and "\n" not in err.message[:200], name
        assert err.error_type in {"a1111_error", "out_of_memory", "a1111_unavailable"}, name
        body = json.dumps(rec["response"]["json"])
        text = rec["response"]["json"].get("errors") or rec["response"]["json"].get("message") \
            if isinstance(rec["response"]["json"], dict) else None
        if isinstance(text, str) and text:
            assert " ".join(text.split())[:40] in err.message, (name, err.message, body[:200])
        seen += 1
    assert seen >= 10
