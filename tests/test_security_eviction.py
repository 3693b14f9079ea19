"""Eviction never removes a model in use, and a model that vanished never "succeeds" silently.

The volume's model cache is shared by every worker: each evicts least recently used
downloads under CACHE_MAX_GB. These tests use real files on a temporary MODELS_DIR, the
replay A1111 listing the files in it (as A1111 does after a rescan), and child processes
playing the other workers of the endpoint: one that evicts, and one that runs a job and is
killed in the middle of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from a1111.state import state_for
from cache import KIND_DIRS
from cache.evict import evict
from cache.registry import Registry
from schemas.settings import Settings
from tests.replay import ReplayServer
from tests.support.jobs import TXT2IMG, JobRunner, txt2img_bodies
from tests.support.model_files import lora_bytes
from tests.support.worker import reset_worker_state, warm_up, write_catalog

REPO = Path(__file__).resolve().parent.parent
run = JobRunner(base={"prompt": "a cat", "steps": 1})
LEASE_S = 2.5  # the dying worker's CACHE_INUSE_LEASE_S: renewed every LEASE_S / 4 while it lives

# Another worker of the endpoint evicting under its own CACHE_MAX_GB (argv: MODELS_DIR, GB);
# it prints what it removed.
EVICTOR = """
import json, sys
from pathlib import Path
from cache import KIND_DIRS
from cache.evict import evict
from cache.registry import Registry
print(json.dumps(evict(Registry(Path(sys.argv[1]), KIND_DIRS), float(sys.argv[2]), [])))
"""

# Another worker running one job (argv: the job input as JSON): ready first, then it waits
# for a line on stdin, so the test can slow the replay's generation down in between.
JOB_WORKER = """
import json, sys
import handler
from a1111 import readiness
from schemas.settings import Settings
readiness.ensure_ready(Settings.from_env())
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(handler.handler({"id": "child", "input": json.loads(sys.argv[1])})), flush=True)
"""


@pytest.fixture
def worker(worker_env: ReplayServer, models_dir: Path, monkeypatch, tmp_path) -> ReplayServer:
    """The replay A1111 listing MODELS_DIR's files, past its warm-up; no catalog."""
    reset_worker_state()
    monkeypatch.setenv("MODELS_CATALOG", str(tmp_path / "no-catalog.json"))
    worker_env.models_dir = models_dir
    warm_up(worker_env)
    yield worker_env
    reset_worker_state()


def downloaded_lora(models_dir: Path, name: str, last_used: float) -> Path:
    """A LoRA the cache downloaded earlier and last used at ``last_used`` (an eviction candidate)."""
    path = models_dir / "loras" / f"{name}.safetensors"
    path.write_bytes(lora_bytes("sd_v1"))
    rel = f"loras/{name}.safetensors"
    Registry(models_dir, KIND_DIRS).record({
        "kind": "lora", "name": name, "path": rel, "bytes": path.stat().st_size, "added": last_used,
        "last_used": last_used, "uses": 1, "pinned": False, "downloaded": True, "source": {"url": "x"}})
    return path


def entries(models_dir: Path) -> dict:
    return json.loads((models_dir / "cache_registry.json").read_text())["entries"]


def budget_for(files: int, one: Path) -> float:
    """CACHE_MAX_GB that fits ``files`` files of the size of ``one``."""
    return (files * one.stat().st_size + 1) / 1024**3


def child(script: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def evict_elsewhere(models_dir: Path, budget_gb: float) -> list[str]:
    proc = child(EVICTOR, str(models_dir), repr(budget_gb))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def wait_for(cond, seconds: float = 20.0) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


# ------------------------------------------------------------------ (a) every use counts
def test_lora_resolved_from_a1111s_list_is_not_the_lru_victim(worker, models_dir):
    """A LoRA A1111 already lists (the cache is never asked) gets its use recorded, so the
    LoRA used by every job is not the one evicted first."""
    favourite = downloaded_lora(models_dir, "favourite", last_used=1000.0)
    downloaded_lora(models_dir, "stale", last_used=2000.0)
    out = run({"loras": [{"name": "favourite", "weight": 0.5}]})
    assert "error" not in out, out
    (body,) = txt2img_bodies(worker)
    assert "<lora:favourite:0.5>" in body["prompt"]
    assert entries(models_dir)["loras/favourite.safetensors"]["last_used"] > 2000.0
    removed = evict(Registry(models_dir, KIND_DIRS), budget_for(1, favourite), [])
    assert removed == ["loras/stale.safetensors"]
    assert favourite.is_file()


def test_uses_are_written_once_per_interval_and_counted(worker, models_dir, monkeypatch):
    """One registry write per job at most, and none again for a model within
    CACHE_TOUCH_INTERVAL_S; the uses in between are added with the next write."""
    downloaded_lora(models_dir, "often", last_used=1000.0)
    registry = models_dir / "cache_registry.json"
    for _ in range(3):
        assert "error" not in run({"loras": ["often"]})
    first = entries(models_dir)["loras/often.safetensors"]
    assert first["uses"] == 2  # recorded once for the first job; the next two only counted
    written = registry.stat().st_mtime_ns
    assert "error" not in run({"loras": ["often"]})
    assert registry.stat().st_mtime_ns == written
    monkeypatch.setenv("CACHE_TOUCH_INTERVAL_S", "0")
    assert "error" not in run({"loras": ["often"]})
    assert entries(models_dir)["loras/often.safetensors"]["uses"] == 2 + 4


# ------------------------------------------------------------------ (b) in-use markers
def test_eviction_by_another_worker_spares_the_models_of_a_running_job(worker, models_dir):
    """While a job generates, another worker (a child process) evicts everything it may
    (CACHE_MAX_GB=0): the job's LoRA stays, an unused one goes; after the job it may go too."""
    held = downloaded_lora(models_dir, "held", last_used=1000.0)
    downloaded_lora(models_dir, "idle", last_used=2000.0)
    worker.delay("POST", TXT2IMG, 8.0)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(run({"loras": ["held"]})))
    job.start()
    try:
        wait_for(lambda: txt2img_bodies(worker))  # generating now
        assert evict_elsewhere(models_dir, 0.0) == ["loras/idle.safetensors"]
        assert job.is_alive(), "the job ended before the other worker evicted: the test proves nothing"
        assert held.is_file()
    finally:
        job.join(timeout=30)
    assert "error" not in result, result
    assert list((models_dir / ".inuse").glob("*.json")) == []  # released at the end of the job
    assert evict_elsewhere(models_dir, 0.0) == ["loras/held.safetensors"]


def test_the_marker_of_a_worker_that_died_mid_job_expires(worker, models_dir):
    """A worker (child process) is killed while generating with a LoRA: its claim protects
    the file while its lease (CACHE_INUSE_LEASE_S) is renewed, and nothing once it expired."""
    held = downloaded_lora(models_dir, "held", last_used=1000.0)
    env = {**os.environ, "CACHE_INUSE_LEASE_S": str(LEASE_S)}
    proc = child(JOB_WORKER, json.dumps({"prompt": "a cat", "steps": 1, "loras": ["held"]}),
                 env=env, stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        worker.reset_requests()
        worker.delay("POST", TXT2IMG, 60.0)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        wait_for(lambda: txt2img_bodies(worker))  # the child generates with "held" now
        time.sleep(LEASE_S + 1)  # longer than the lease: only the child's heartbeat keeps the claim fresh
        assert evict_elsewhere(models_dir, 0.0) == []
        assert held.is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    markers = list((models_dir / ".inuse").glob("*.json"))
    assert len(markers) == 1  # a killed worker cleans nothing up
    time.sleep(LEASE_S + 0.5)
    assert evict_elsewhere(models_dir, 0.0) == ["loras/held.safetensors"]
    assert not held.exists() and not markers[0].exists()


# ------------------------------------------------------------------ (c) vanished files
def test_lora_deleted_after_the_list_was_cached_fails_clearly(worker, models_dir):
    """Another worker's eviction (here: the file removed) after this worker read A1111's
    LoRA list: the job fails with model_not_found naming it instead of generating without it,
    and the worker's list no longer claims it."""
    path = models_dir / "loras" / "vanishing.safetensors"
    path.write_bytes(lora_bytes("sd_v1"))
    assert "error" not in run({"loras": ["vanishing"]})
    worker.reset_requests()
    path.unlink()
    out = run({"loras": ["vanishing"]})
    assert out.get("error_type") == "model_not_found", out
    assert "vanishing" in out["error"] and "loras/vanishing.safetensors" in out["error"]
    assert txt2img_bodies(worker) == []
    assert worker.sent("POST", "/sdapi/v1/refresh-loras")  # A1111 rescanned its folder
    assert state_for(Settings.from_env()).lists.find("lora", "vanishing") is None


def test_lora_with_a_source_deleted_after_the_list_was_cached_is_placed_again(
        worker, models_dir, https_files, monkeypatch, tmp_path):
    """The same, for a catalog LoRA with a source: the cache downloads it again, A1111's
    list is refreshed, and the job generates with the file back on the volume."""
    https_files.files["/dl/grain.safetensors"] = lora_bytes("sd_v1")
    catalog = write_catalog(tmp_path / "models.json", [{
        "id": "grain", "kind": "lora", "file": "grain.safetensors", "family": "sd15",
        "source": {"url": f"{https_files.url}/dl/grain.safetensors"}}])
    monkeypatch.setenv("MODELS_CATALOG", str(catalog))
    path = models_dir / "loras" / "grain.safetensors"
    assert "error" not in run({"loras": [{"name": "grain", "weight": 0.7}]})
    assert path.is_file()
    worker.reset_requests()
    path.unlink()
    out = run({"loras": [{"name": "grain", "weight": 0.7}]})
    assert "error" not in out, out
    assert path.read_bytes() == https_files.files["/dl/grain.safetensors"]
    assert https_files.gets == ["/dl/grain.safetensors"] * 2
    (body,) = txt2img_bodies(worker)
    assert "<lora:grain:0.7>" in body["prompt"]
