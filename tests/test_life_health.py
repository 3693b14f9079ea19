"""The health action (a1111/health.py, monitor/metrics.py, monitor/gpu.py) through the real
entry point, over real HTTP: a starting worker, a dead A1111, job counters, the GPU reading.

A port with nothing listening stands in for an A1111 that is still importing torch; a real
child process stands in for the A1111 process whose pid start.sh writes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from a1111 import readiness
from a1111.health import STARTING_GRACE_S
from monitor import gpu as gpu_module
from monitor.metrics import RECENT_GENERATIONS, WORKER_JOBS, JobCounters, duration_summary, outcome, percentile
from schemas.settings import Settings
from tests.replay import ReplayServer
from tests.support.jobs import TXT2IMG, JobRunner
from tests.support.ports import free_port
from tests.support.worker import point_worker_at, running_worker

ROOT = Path(__file__).resolve().parent.parent
HUB_FIRST_TEST = json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"][0]["input"]
run = JobRunner(job_id="health")

pytestmark = pytest.mark.usefixtures("fresh_worker_state", "fresh_counters")


@pytest.fixture
def fresh_counters():
    WORKER_JOBS.reset()
    yield
    WORKER_JOBS.reset()


def _start_warm_up(settings: Settings):
    """The worker's background warm-up (as at worker start), once it holds the readiness lock."""
    thread = readiness.prewarm_in_background(settings)
    end = time.monotonic() + 2
    while not readiness.warming_up(settings):
        assert time.monotonic() < end, "the warm-up never started"
        time.sleep(0.002)
    return thread


def _timed(inp: dict) -> tuple[dict, float]:
    t0 = time.monotonic()
    out = run(inp)
    return out, time.monotonic() - t0


# --------------------------------------------------------------------------- a starting worker
def test_starting_worker_answers_at_once_then_ok_once_a1111_is_up(monkeypatch, models_dir):
    """Nothing listens on the port yet (A1111 still starting): the Hub's first test, health,
    answers `starting` at once with the phases seen so far; once a server answers there and
    the warm-up is done, health says `ok` with the phases measured."""
    assert HUB_FIRST_TEST == {"action": "health"}
    port = free_port()
    point_worker_at(monkeypatch, f"http://127.0.0.1:{port}", models_dir, ready_timeout=30)
    settings = Settings.from_env()
    warm_up = _start_warm_up(settings)

    out, took = _timed(HUB_FIRST_TEST)
    assert "error" not in out, out  # RunPod counts a result with "error" as a failed test
    assert took < STARTING_GRACE_S + 0.7, f"health took {took:.2f} s on a starting worker"
    assert out["status"] == "starting" and out["backend"] == "a1111"
    assert out["waiting_for"] == "API answering"
    assert out["cold_start"] == {"ready": False, "api_up_s": None, "model_loaded_s": None, "warm_s": None,
                                 "no_checkpoint": False}
    assert out["model"] == {"status": "loading", "checkpoint": None}
    assert out["ping_ms"] is None and out["memory"] is None and out["since_launch_s"] is None  # unsupervised
    assert out["jobs"]["total"] == 0

    with ReplayServer("a1111", port=port) as srv:
        warm_up.join(timeout=15)
        assert not warm_up.is_alive()
        out = run(HUB_FIRST_TEST)
        assert out["status"] == "ok", out
        assert out["cold_start"]["ready"] is True
        assert 0 <= out["cold_start"]["api_up_s"] <= out["cold_start"]["model_loaded_s"] <= out["cold_start"]["warm_s"]
        assert out["model"] == {"status": "loaded", "checkpoint": "model_a.safetensors"}
        assert out["memory"] == srv.recording("get_memory")["response"]["json"]
        assert out["jobs"]["total"] == 1 and out["jobs"]["succeeded"] == 1  # the first health, counted


@pytest.fixture
def a1111_process(tmp_path):
    """A live child process as the A1111 that start.sh launched, with its pid and log files."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "a1111.pid").write_text(f"{proc.pid}\n")
    (tmp_path / "a1111.log").write_text("Loading weights [abc] from model_a.safetensors\nSegmentation fault\n")
    yield proc
    proc.kill()
    proc.wait()


def test_a1111_that_dies_while_starting_fails_health_with_refresh(monkeypatch, models_dir, tmp_path, a1111_process):
    """A1111 (the child process) is alive but not listening yet, then exits: health goes from
    `starting` to the usual dead-A1111 error, with its log tail and refresh_worker."""
    point_worker_at(monkeypatch, f"http://127.0.0.1:{free_port()}", models_dir, ready_timeout=30)
    monkeypatch.setenv("A1111_PID_FILE", str(tmp_path / "a1111.pid"))  # as start.sh exports them
    monkeypatch.setenv("A1111_LOG_FILE", str(tmp_path / "a1111.log"))
    warm_up = _start_warm_up(Settings.from_env())

    out, took = _timed({"action": "health"})
    assert out["status"] == "starting", out
    assert took < STARTING_GRACE_S + 0.7
    assert out["since_launch_s"] is not None and out["since_launch_s"] >= 0

    a1111_process.kill()
    a1111_process.wait()
    out = run({"action": "health"})
    assert out["error_type"] == "a1111_unavailable", out
    assert out["refresh_worker"] is True
    assert "Segmentation fault" in out["log_tail"]
    warm_up.join(timeout=5)
    assert WORKER_JOBS.snapshot()["failed_by_type"] == {"a1111_unavailable": 1}


# --------------------------------------------------------------------------- counters
def test_health_after_jobs_reports_the_counters(monkeypatch, tmp_path, models_dir):
    """Jobs against the replay server: two generations, one refused input; the counters
    hold them, with median and p95 from the generations' own timings."""
    with running_worker("a1111", monkeypatch, tmp_path, models_dir):
        WORKER_JOBS.reset()  # the warm-up is readiness's, not a job
        done = [run({"prompt": "a red tile"}), run({"prompt": "a blue tile", "seed": 7})]
        refused = run({"prompt": "a tile", "steps": 500})
        out = run({"action": "health"})

    assert all("error" not in r for r in done), done
    assert refused["error_type"] == "validation"
    gens = [r["timings"]["generate_s"] for r in done]
    images = sum(len(r["images"]) for r in done)
    assert out["status"] == "ok" and out["model"] == {"status": "loaded", "checkpoint": "model_a.safetensors"}
    jobs = out["jobs"]
    assert {k: jobs[k] for k in ("total", "succeeded", "failed", "failed_by_type", "success_rate", "images")} == {
        "total": 3, "succeeded": 2, "failed": 1, "failed_by_type": {"validation": 1},
        "success_rate": round(2 / 3, 4), "images": images}
    assert jobs["generation_s"] == {"median": round(statistics.median(gens), 3), "p95": max(gens), "samples": 2}
    assert jobs["images_per_minute"] == round(images * 60 / sum(gens), 2)
    assert 0 <= jobs["since_s"] < 600


def test_model_failed_after_a_stuck_backend_until_a_generation_succeeds(forge_env):
    """Forge's recorded stuck state (stuck_2: 500 AttributeError 'sd_checkpoint_info' after a
    failed load) asks for a new worker; health then reports the model as failed."""
    assert "error" not in run({"prompt": "a tile"})
    forge_env.respond_sequence("POST", TXT2IMG, ["stuck_2_txt2img_plain_500", "stuck_11_txt2img_plain_recovered"])
    stuck = run({"prompt": "a tile"})
    assert stuck.get("refresh_worker") is True, stuck
    model = run({"action": "health"})["model"]
    assert model["status"] == "failed" and "a1111_error" in model["reason"], model
    assert "error" not in run({"prompt": "a tile"})
    assert run({"action": "health"})["model"]["status"] == "loaded"


def test_model_failed_while_the_start_up_check_stands_failed(forge_env):
    """The warm-up generation of a fresh worker fails (Forge's recorded stuck state,
    stuck_2: 500): the job reports it, and health, A1111 still answering its lists, shows the
    model as failed with that reason until a later job's check succeeds."""
    forge_env.respond_sequence("POST", TXT2IMG, ["stuck_2_txt2img_plain_500", "stuck_11_txt2img_plain_recovered"])
    first = run({"prompt": "a tile"})
    assert first["error_type"] == "a1111_unavailable" and "warm-up" in first["error"], first
    status = run({"action": "health"})
    assert status["status"] == "ok" and status["cold_start"]["ready"] is False, status
    assert status["model"]["status"] == "failed", status["model"]
    assert "start-up check failed" in status["model"]["reason"] and "HTTP 500" in status["model"]["reason"]
    assert "error" not in run({"prompt": "a tile"})  # the check runs again and passes
    assert run({"action": "health"})["model"]["status"] == "loaded"


def test_counters_are_bounded_and_pure():
    counters = JobCounters(now=lambda: 100.0)
    for i in range(RECENT_GENERATIONS + 50):
        counters.record({"images": ["x"], "timings": {"generate_s": float(i)}})
    counters.record({"error": "no", "error_type": "timeout"})
    counters.record({"status": "ok"})  # health, list_models: counted, no generation
    snap = counters.snapshot()
    assert snap["generation_s"]["samples"] == RECENT_GENERATIONS  # only the recent ones are kept
    assert snap["generation_s"]["median"] == statistics.median(range(50, RECENT_GENERATIONS + 50))
    assert snap["total"] == RECENT_GENERATIONS + 52 and snap["failed_by_type"] == {"timeout": 1}
    assert snap["images"] == RECENT_GENERATIONS + 50  # every generation's images, not just the recent ones
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0 and percentile([5.0], 0.95) == 5.0
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert duration_summary([]) == {"median": None, "p95": None, "samples": 0}
    assert outcome({"error": "x"}).error_type == "unknown"
    assert outcome({"images": [1], "timings": {"generate_s": True}}).generate_s is None
    assert math.isclose(outcome({"images": [1, 2], "timings": {"generate_s": 2}}).generate_s, 2.0)


# --------------------------------------------------------------------------- the GPU
class _FakeNVMLError(Exception):
    pass


def _fake_nvml(*, count: int = 1, temperature_fails: bool = False) -> SimpleNamespace:
    """A stand-in for an initialised pynvml with the attributes and value shapes the real one has."""
    def temperature(handle, sensor):
        assert handle == "h0" and sensor == 0
        if temperature_fails:
            raise _FakeNVMLError("Not Supported")
        return 41

    return SimpleNamespace(
        NVMLError=_FakeNVMLError, NVML_TEMPERATURE_GPU=0, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN=1,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: "NVIDIA H200",
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetTemperatureThreshold=lambda h, kind: {1: 87}[kind],
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=87, memory=40),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=143771 * 2**20, used=20000 * 2**20,
                                                          free=123771 * 2**20),
    )


def test_gpu_reading_shape_from_an_nvml_module():
    reading, reason = gpu_module.gpu_status(_fake_nvml())
    assert reason is None
    assert reading == {"index": 0, "count": 1, "name": "NVIDIA H200", "temperature_c": 41,
                       "temperature_slowdown_c": 87, "utilization_percent": 87, "memory_busy_percent": 40,
                       "memory_total_mb": 143771, "memory_used_mb": 20000, "memory_free_mb": 123771}
    reading, _ = gpu_module.gpu_status(_fake_nvml(temperature_fails=True))
    assert reading["temperature_c"] is None and reading["utilization_percent"] == 87
    assert gpu_module.gpu_status(_fake_nvml(count=0)) == (None, "NVML sees 0 GPU(s)")


def test_gpu_is_null_with_the_reason_on_this_machine(worker_env):
    """No stand-in: the real import of pynvml and NVML's start on this machine."""
    out = run({"action": "health"})
    reading, reason = gpu_module.read_gpu()
    assert (out["gpu"], out["gpu_unavailable_reason"]) == (reading, reason)
    if importlib.util.find_spec("pynvml") is None:
        assert reading is None and reason.startswith("nvidia-ml-py is not installed")
    elif not Path("/dev/nvidiactl").exists():
        assert reading is None and reason.startswith("NVML did not start")
    else:  # a GPU machine: a real reading
        assert reading is not None and reading["name"] and reason is None
