"""Readiness (a1111/readiness.py) and process supervision (a1111/supervisor.py), over real HTTP.

The replay server stands in for A1111; real child processes stand in for the A1111 process
whose pid start.sh writes, so "alive" and "dead" are real process states.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from a1111 import readiness
from a1111.state import state_for
from a1111.supervisor import Supervisor
from schemas.errors import A1111Unavailable, OutOfMemory, error_result
from schemas.settings import Settings
from tests.replay import ReplayServer
from tests.support.ports import free_port

# Readiness is kept per A1111 URL, and the servers here reuse ports: every test starts unready.
pytestmark = pytest.mark.usefixtures("fresh_worker_state")


def _settings(monkeypatch: pytest.MonkeyPatch, url: str, timeout: float = 5.0) -> Settings:
    monkeypatch.setenv("A1111_URL", url)
    monkeypatch.setenv("A1111_READY_TIMEOUT", str(timeout))
    return Settings.from_env()


def _supervisor(tmp_path: Path, pid: int | None, log_lines: list[str] = ()) -> Supervisor:
    sup = Supervisor(pid_file=tmp_path / "a1111.pid", log_file=tmp_path / "a1111.log")
    if pid is not None:
        sup.pid_file.write_text(f"{pid}\n")
    sup.log_file.write_text("".join(f"{line}\n" for line in log_lines))
    return sup


@pytest.fixture
def live_child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_ready_runs_every_phase_once_then_is_cheap(monkeypatch, replay, tmp_path, live_child):
    settings = _settings(monkeypatch, replay.url)
    sup = _supervisor(tmp_path, live_child.pid)

    readiness.ensure_ready(settings, sup)

    paths = [(r.method, r.path) for r in replay.requests]
    assert ("GET", "/sdapi/v1/sd-models") in paths
    assert ("GET", "/sdapi/v1/options") in paths
    warmups = replay.sent("POST", "/sdapi/v1/txt2img")
    assert len(warmups) == 1
    assert warmups[0]["width"] == 64 and warmups[0]["height"] == 64 and warmups[0]["steps"] == 1
    # phases are measured against the process start (pid file mtime) and are ordered
    cold = readiness.cold_start(settings)
    assert cold["ready"] is True
    assert 0 <= cold["api_up_s"] <= cold["model_loaded_s"] <= cold["warm_s"]

    replay.reset_requests()
    readiness.ensure_ready(settings, sup)
    assert replay.requests == []  # later calls do no HTTP at all


def test_warmup_payload_matches_a1111_openapi_schema():
    # The recorded /openapi.json is what a real A1111 v1.10.1 accepts for txt2img.
    import json

    import jsonschema

    spec = json.loads((Path(__file__).parent / "recordings/a1111/get_openapi_json.json").read_text())
    schemas = spec["response"]["json"]["components"]["schemas"]
    model = schemas["StableDiffusionProcessingTxt2Img"]
    unknown = set(readiness.WARMUP_PAYLOAD) - set(model["properties"])
    assert not unknown
    resolver_doc = {"components": {"schemas": schemas}, **model}
    jsonschema.validate(readiness.WARMUP_PAYLOAD, resolver_doc)


def test_never_ready_fails_clearly_at_the_deadline(monkeypatch, tmp_path, live_child):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = _settings(monkeypatch, url, timeout=0.6)
    sup = _supervisor(tmp_path, live_child.pid, ["Loading weights...", "still loading"])
    t0 = time.monotonic()
    with pytest.raises(A1111Unavailable) as info:
        readiness.ensure_ready(settings, sup)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.6 + 0.5  # measured from the pid file's time, not from this call
    result = error_result(info.value)
    assert result["error_type"] == "a1111_unavailable"
    assert "A1111_READY_TIMEOUT" in result["error"] and "connection refused" in result["error"]
    assert "refresh_worker" not in result  # alive but slow is not a broken worker
    assert result["log_tail"][-1] == "still loading"


def test_after_the_deadline_a_job_gets_a_short_look_and_succeeds_if_ready(monkeypatch, tmp_path, live_child):
    port = free_port()
    settings = _settings(monkeypatch, f"http://127.0.0.1:{port}", timeout=0.3)
    sup = _supervisor(tmp_path, live_child.pid)
    with pytest.raises(A1111Unavailable):
        readiness.ensure_ready(settings, sup)
    # A1111 finishes starting after the deadline: the next job finds it without waiting long.
    with ReplayServer("a1111", port=port) as srv:
        t0 = time.monotonic()
        readiness.ensure_ready(settings, sup)
        assert time.monotonic() - t0 < readiness.LATE_GRACE_S
        assert len(srv.sent("POST", "/sdapi/v1/txt2img")) == 1


def test_process_dead_at_start_fails_at_once_with_log_tail_and_refresh(monkeypatch, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    lines = [f"line {i}" for i in range(100)] + ["RuntimeError: CUDA driver version is insufficient"]
    sup = _supervisor(tmp_path, proc.pid, lines)
    settings = _settings(monkeypatch, f"http://127.0.0.1:{free_port()}", timeout=30)
    t0 = time.monotonic()
    with pytest.raises(A1111Unavailable) as info:
        readiness.ensure_ready(settings, sup)
    assert time.monotonic() - t0 < 1.0  # not after the 30 s deadline
    result = error_result(info.value)
    assert result["error_type"] == "a1111_unavailable"
    assert result["refresh_worker"] is True
    assert result["log_tail"][-1] == "RuntimeError: CUDA driver version is insufficient"
    assert 10 <= len(result["log_tail"]) <= 40


def test_process_dying_after_ready_fails_next_job_at_once(monkeypatch, replay, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sup = _supervisor(tmp_path, proc.pid, ["Model loaded in 4.1s", "Segmentation fault (core dumped)"])
        settings = _settings(monkeypatch, replay.url)
        readiness.ensure_ready(settings, sup)
        proc.kill()
        proc.wait()
        with pytest.raises(A1111Unavailable) as info:
            readiness.ensure_ready(settings, sup)
        result = error_result(info.value)
        assert result["refresh_worker"] is True
        assert result["log_tail"][-1] == "Segmentation fault (core dumped)"
    finally:
        proc.kill()
        proc.wait()


def test_process_dying_while_waiting_is_noticed_before_the_deadline(monkeypatch, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.4)"])
    sup = _supervisor(tmp_path, proc.pid, ["Traceback (most recent call last):", "ImportError: xformers"])
    settings = _settings(monkeypatch, f"http://127.0.0.1:{free_port()}", timeout=30)
    t0 = time.monotonic()
    with pytest.raises(A1111Unavailable) as info:
        readiness.ensure_ready(settings, sup)
    proc.wait()
    assert time.monotonic() - t0 < 3.0
    assert info.value.refresh_worker is True
    assert "exited during start-up" in info.value.message


def test_zombie_child_counts_as_dead(tmp_path):
    # The handler may be A1111's parent; an unreaped dead child must not look alive.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":
            break
        time.sleep(0.01)
    sup = _supervisor(tmp_path, proc.pid)
    assert sup.alive() is False
    proc.returncode = 0  # already reaped by the supervisor; keep Popen's destructor quiet


def test_unsupervised_means_unknown(tmp_path):
    sup = _supervisor(tmp_path, None)
    assert sup.alive() is None and sup.managed is False and sup.log_tail() == []


def test_warmup_oom_is_reported_as_out_of_memory(monkeypatch, replay, tmp_path, live_child):
    # Simulated: a CUDA OOM answered by A1111's exception handler. The body takes the shape
    # of the recorded 500 (error/detail/body/errors); A1111 puts the exception's class name in
    # "error" and torch's message in "errors".
    shape = replay.recording("post_options_switch_checkpoint_unknown_500")["response"]["json"]
    body = {**shape, "error": "OutOfMemoryError", "errors": "CUDA out of memory. Tried to allocate 20.00 MiB"}
    replay.fault("POST", "/sdapi/v1/txt2img", "status", status=500, body=body)
    settings = _settings(monkeypatch, replay.url)
    with pytest.raises(OutOfMemory) as info:
        readiness.ensure_ready(settings, _supervisor(tmp_path, live_child.pid))
    assert error_result(info.value)["refresh_worker"] is True


def test_warmup_failure_is_a1111_unavailable_and_retried_by_the_next_job(monkeypatch, replay, tmp_path, live_child):
    # A real txt2img 500 (ZeroDivisionError for steps 0), served once in place of the warm-up answer.
    body = replay.recording("txt2img_steps_0_500")["response"]["json"]
    replay.fault("POST", "/sdapi/v1/txt2img", "status", status=500, body=body, times=1)
    settings = _settings(monkeypatch, replay.url)
    sup = _supervisor(tmp_path, live_child.pid)
    with pytest.raises(A1111Unavailable) as info:
        readiness.ensure_ready(settings, sup)
    assert "warm-up generation failed with HTTP 500" in info.value.message
    readiness.ensure_ready(settings, sup)  # fault used up: the next job warms up fine
    assert len(replay.sent("POST", "/sdapi/v1/txt2img")) == 2


def test_api_noticed_quickly_after_it_starts_answering(monkeypatch, tmp_path, live_child):
    # Functional check of the fast poll (the timing itself is measured in bench/readiness.py).
    port = free_port()
    settings = _settings(monkeypatch, f"http://127.0.0.1:{port}")
    sup = _supervisor(tmp_path, live_child.pid)
    started: dict[str, float] = {}

    def late_start() -> None:
        time.sleep(0.3)
        srv = ReplayServer("a1111", port=port).start()
        started["t"] = time.monotonic()
        started["srv"] = srv

    t = threading.Thread(target=late_start)
    t.start()
    try:
        readiness.ensure_ready(settings, sup)
    finally:
        t.join()
        started["srv"].stop()
    noticed = state_for(settings).readiness.cold.noticed_at["api_up"]
    assert noticed - started["t"] < 0.5


def test_ready_on_forge(monkeypatch, forge_replay, tmp_path, live_child):
    # Forge loads the checkpoint lazily inside the first generation: the warm-up pays for it.
    settings = _settings(monkeypatch, forge_replay.url)
    readiness.ensure_ready(settings, _supervisor(tmp_path, live_child.pid))
    assert len(forge_replay.sent("POST", "/sdapi/v1/txt2img")) == 1
    assert readiness.cold_start(settings)["ready"] is True


def test_job_deadline_before_ready_is_a_timeout_and_start_up_goes_on(monkeypatch, tmp_path, live_child):
    from schemas.errors import JobTimeout

    port = free_port()
    settings = _settings(monkeypatch, f"http://127.0.0.1:{port}", timeout=30)
    sup = _supervisor(tmp_path, live_child.pid)
    t0 = time.monotonic()
    with pytest.raises(JobTimeout) as info:
        readiness.ensure_ready(settings, sup, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 1.5
    assert "still starting" in info.value.message and error_result(info.value)["error_type"] == "timeout"
    with ReplayServer("a1111", port=port):
        readiness.ensure_ready(settings, sup, deadline=time.monotonic() + 10)  # the next job: ready
    assert readiness.cold_start(settings)["ready"] is True


class _SilentServer:
    """Simulates an A1111 that is importing torch or loading a model in its only worker:
    the port accepts TCP connections, but no HTTP request is ever answered."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
        self._thread.join(2)


JOB_INPUT = {"prompt": "a red rubber tile", "width": 64, "height": 64, "steps": 2, "seed": 1}


@pytest.mark.parametrize("standin", ["nothing_listening", "accepts_never_answers"])
def test_job_timeout_bounds_the_wait_while_the_warm_up_goes_on(monkeypatch, tmp_path, standin):
    """JOB_TIMEOUT=4 and an A1111 that is never ready during the job: either nothing listens on
    its port yet (A1111 still importing, connection refused) or a server accepts connections and
    never answers. The job fails with ``timeout`` at its own deadline while the background
    warm-up keeps waiting (A1111_READY_TIMEOUT=60); once A1111 is up, the next job succeeds on
    that same warm-up: one warm-up generation, no second wait started."""
    from handler import handler
    from tests.support.jobs import TXT2IMG, txt2img_bodies
    from tests.support.worker import make_models_dir, point_worker_at

    port = free_port()
    point_worker_at(monkeypatch, f"http://127.0.0.1:{port}", make_models_dir(tmp_path / "models"), ready_timeout=60)
    monkeypatch.setenv("JOB_TIMEOUT", "4")
    monkeypatch.setenv("MODELS_CATALOG", str(tmp_path / "no-catalog.json"))
    silent = _SilentServer(port) if standin == "accepts_never_answers" else None
    try:
        warm_up_thread = readiness.prewarm_in_background(Settings.from_env())
        t0 = time.monotonic()
        result = handler({"id": "first", "input": JOB_INPUT})
        took = time.monotonic() - t0
    finally:
        if silent is not None:
            silent.close()
    assert result["error_type"] == "timeout", result
    assert 3.5 <= took < 6.0
    assert "JOB_TIMEOUT=4" in result["error"] and "still starting" in result["error"]
    assert "waiting for: API answering" in result["error"] and "keeps starting it" in result["error"]
    assert warm_up_thread.is_alive()  # still waiting, with its own deadline
    assert readiness.phase_now(Settings.from_env()) == "API answering"

    with ReplayServer("a1111", port=port) as srv:
        result = handler({"id": "second", "input": JOB_INPUT})
        assert "images" in result, result
        warm_up_thread.join(5)
        assert not warm_up_thread.is_alive()
        warmups = [b for b in srv.sent("POST", TXT2IMG) if b.get("prompt") == readiness.WARMUP_PAYLOAD["prompt"]]
        assert len(warmups) == 1 and len(txt2img_bodies(srv)) == 1
    assert readiness.phase_now(Settings.from_env()) == "ready"
