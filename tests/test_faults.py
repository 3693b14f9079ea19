"""Fault matrix: the handler against real local servers that misbehave on purpose.

Every case runs the real handler over real HTTP on 127.0.0.1: the replay A1111 server
(tests/replay.py) with its fault injection, a replay server in its own process that is
killed, and local HTTPS file servers for downloads. Each case checks the error_type, that
nothing partial is left under MODELS_DIR, that the cache registry is consistent, and that the
next job succeeds, or that the worker asks to be refreshed where it really is broken.

What is simulated (and says so where it happens): the CUDA out-of-memory 500 (a body shaped
like a recorded A1111 500 body, with PyTorch's OOM message; no GPU here), a dropped or
truncated connection (the server closes the socket on purpose), and the full disk (a real
ENOSPC from the kernel: a tiny tmpfs in a private mount namespace, or /dev/full where that is
not permitted).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from a1111.state import state_for
from cache.refs import parse_ref
from tests.replay import ReplayServer
from tests.support.jobs import JobRunner
from tests.support.model_files import lora_bytes
from tests.support.ports import free_port
from tests.support.worker import point_worker_at

REPO = Path(__file__).resolve().parent.parent
TXT2IMG = "/sdapi/v1/txt2img"
JOB = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64, "seed": 42}

# Many servers start and stop here, and ports are reused: no test inherits another's worker state.
pytestmark = pytest.mark.usefixtures("fresh_worker_state")

run = JobRunner(job_id="fault", default=JOB)


def assert_ok(result: dict) -> None:
    assert "error" not in result, result
    assert result["images"], result


def assert_volume_clean(models: Path) -> None:
    """No partial file anywhere under MODELS_DIR, and a registry that lists only real files."""
    leftovers = [p for p in models.rglob("*") if p.is_file() and (p.name.endswith((".part", ".tmp", ".conv"))
                                                                  or ".downloads" in p.parts)]
    assert not leftovers, f"partial files left on the volume: {leftovers}"
    reg = models / "cache_registry.json"
    if reg.exists():
        entries = json.loads(reg.read_text())["entries"]
        for rel, entry in entries.items():
            assert (models / rel).is_file(), f"registry lists {rel}, which is not on the volume"
            assert entry["path"] == rel
            if entry.get("bytes") is not None:
                assert (models / rel).stat().st_size == entry["bytes"], rel


# --------------------------------------------------------------------------- A1111 faults
def test_a1111_not_up_at_start_then_comes_up(monkeypatch, models_dir):
    port = free_port()
    point_worker_at(monkeypatch, f"http://127.0.0.1:{port}", models_dir, ready_timeout=1)
    t0 = time.monotonic()
    out = run()
    assert out["error_type"] == "a1111_unavailable", out
    assert "A1111_READY_TIMEOUT" in out["error"]
    assert not out.get("refresh_worker"), "a slow start is not a broken worker"
    assert time.monotonic() - t0 < 10
    with ReplayServer("a1111", port=port) as srv:  # A1111 finally listens on its port
        assert_ok(run())
        assert srv.sent("POST", TXT2IMG), "the job reached A1111"
    assert_volume_clean(models_dir)


def _start_replay_process(tmp_path: Path, port: int, delay: float) -> subprocess.Popen:
    log = (tmp_path / "a1111.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tests.replay", "--port", str(port), "--txt2img-delay", str(delay)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("replay process did not start")


def _kill_during_generation(proc: subprocess.Popen, port: int, nth: int) -> None:
    """SIGKILL ``proc`` once its ``nth`` generation is under way, seen through /sdapi/v1/progress:
    a generation starts when the server turns busy, or when its progress drops back (the replay
    server steps through the recorded mid-generation polls; back-to-back generations never idle)."""
    import requests

    seen, last, deadline = 0, None, time.monotonic() + 30
    with requests.Session() as http:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = http.get(f"http://127.0.0.1:{port}/sdapi/v1/progress", timeout=2).json()
                busy, progress = bool(body["state"]["job_count"]), float(body["progress"])
            except (requests.RequestException, ValueError, KeyError, TypeError):
                busy, progress = False, None
            if busy and (last is None or (progress is not None and progress < last)):
                seen += 1
                if seen == nth:
                    time.sleep(0.3)
                    proc.send_signal(signal.SIGKILL)
                    return
            last = progress if busy else None
            time.sleep(0.05)


def test_a1111_process_dies_mid_generation(monkeypatch, models_dir, tmp_path):
    """A1111 (a replay server in its own process, supervised through the pid file start.sh
    writes) is killed with SIGKILL while it generates: the connection closes mid-request."""
    port = free_port()
    proc = _start_replay_process(tmp_path, port, delay=3)
    try:
        (tmp_path / "a1111.pid").write_text(str(proc.pid))
        point_worker_at(monkeypatch, f"http://127.0.0.1:{port}", models_dir, ready_timeout=20)
        monkeypatch.setenv("A1111_PID_FILE", str(tmp_path / "a1111.pid"))
        monkeypatch.setenv("A1111_LOG_FILE", str(tmp_path / "a1111.log"))
        # Every generation takes 3 s here, the readiness warm-up too: kill during the second one.
        killer = threading.Thread(target=_kill_during_generation, args=(proc, port, 2), daemon=True)
        killer.start()
        t0 = time.monotonic()
        out = run()
        killer.join(timeout=5)
        # SIGKILL closes the process's sockets (the job sees the drop) a moment before the kernel
        # makes it a zombie; under load a bare poll() could land in between. Bounded wait instead.
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("the A1111 stand-in was not killed mid-generation")
        assert out["error_type"] == "a1111_unavailable", out
        assert out.get("refresh_worker") is True, "a dead A1111 means a broken worker"
        assert "no longer running" in out["error"], out  # died during the job, not the warm-up
        assert "log_tail" in out and any("replay A1111" in line for line in out["log_tail"]), out
        assert time.monotonic() - t0 < 20, "the death was noticed at once, not after a timeout"
        # The next job fails at once too, still asking for a refresh (nothing to retry against).
        t1 = time.monotonic()
        again = run()
        assert again["error_type"] == "a1111_unavailable" and again.get("refresh_worker") is True, again
        assert time.monotonic() - t1 < 2
    finally:
        proc.kill()
        proc.wait()
    assert_volume_clean(models_dir)


def test_connection_dropped_mid_generation_then_next_job_succeeds(worker_env, models_dir):
    assert_ok(run())  # ready and warm
    worker_env.fault("POST", TXT2IMG, "drop", times=1)
    n_before = len(worker_env.sent("POST", TXT2IMG))
    out = run()
    assert out["error_type"] == "a1111_unavailable", out
    assert "closed the connection" in out["error"]
    assert not out.get("refresh_worker"), "no supervised process died: the worker is not recycled"
    assert len(worker_env.sent("POST", TXT2IMG)) == n_before + 1, "a txt2img that may have run is never re-sent"
    assert_ok(run())
    assert_volume_clean(models_dir)


def test_500_with_a1111_error_body(worker_env, models_dir):
    assert_ok(run())
    body = worker_env.recording("txt2img_steps_0_500")["response"]["json"]  # a real A1111 500 body
    worker_env.fault("POST", TXT2IMG, "status", status=500, body=body, times=1)
    out = run()
    assert out["error_type"] == "a1111_error", out
    assert "ZeroDivisionError" in out["error"] and "HTTP 500" in out["error"]
    assert not out.get("refresh_worker")
    assert_ok(run())
    assert_volume_clean(models_dir)


def test_500_cuda_out_of_memory_asks_for_refresh(worker_env, models_dir):
    assert_ok(run())
    # SIMULATED: no GPU here. The shape is the recorded A1111 500 body (error/detail/body/errors);
    # the text is PyTorch's CUDA OOM message, which A1111 puts in "errors" (error = class name).
    body = worker_env.recording("txt2img_steps_0_500")["response"]["json"]
    body.update(error="OutOfMemoryError",
                errors="CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.64 GiB "
                       "of which 1.19 GiB is free.")
    worker_env.fault("POST", TXT2IMG, "status", status=500, body=body, times=1)
    out = run()
    assert out["error_type"] == "out_of_memory", out
    assert out.get("refresh_worker") is True, "CUDA state may be poisoned: recycle the worker"
    assert "smaller" in out["error"]
    assert_volume_clean(models_dir)


def test_generation_slower_than_the_job_deadline(worker_env, monkeypatch, models_dir):
    assert_ok(run())
    monkeypatch.setenv("JOB_TIMEOUT", "1.5")
    worker_env.delay("POST", TXT2IMG, 30)
    t0 = time.monotonic()
    out = run()
    took = time.monotonic() - t0
    assert out["error_type"] == "timeout", out
    assert "images" not in out, "partial images of an interrupted generation are never returned"
    assert took < 8, f"the job took {took:.1f} s past a 1.5 s limit"
    assert worker_env.sent("POST", "/sdapi/v1/interrupt"), "A1111 was told to stop"
    worker_env.delay("POST", TXT2IMG, 0)
    monkeypatch.setenv("JOB_TIMEOUT", "60")
    assert_ok(run())
    assert_volume_clean(models_dir)


@pytest.mark.parametrize("kind", ["truncate", "garbage"])
def test_truncated_or_non_json_txt2img_answer(worker_env, models_dir, kind):
    assert_ok(run())
    worker_env.fault("POST", TXT2IMG, kind, times=1)
    out = run()
    # truncate: the body stops halfway and the socket closes (A1111 went away mid-answer);
    # garbage: a 200 HTML page where JSON was expected (a proxy in the way).
    assert out["error_type"] == ("a1111_unavailable" if kind == "truncate" else "a1111_error"), out
    assert "images" not in out
    assert not out.get("refresh_worker")
    assert_ok(run())
    assert_volume_clean(models_dir)


@pytest.mark.parametrize("kind", ["truncate", "garbage", "drop"])
def test_faulty_list_answer_is_retried_or_reported(worker_env, models_dir, kind):
    """A broken GET (sd-models, read while resolving names) is safe to send again."""
    assert_ok(run())
    state_for(worker_env.url).lists.forget()  # make the next job read the list again
    worker_env.fault("GET", "/sdapi/v1/loras", kind, times=1)
    sent_before = len(worker_env.sent("POST", TXT2IMG))
    out = run({**JOB, "loras": [{"name": "detail_tweaker", "weight": 0.5}]})
    if kind == "garbage":  # a 200 that is not JSON is not retried: reported, before generation
        assert out["error_type"] == "a1111_error", out
        assert len(worker_env.sent("POST", TXT2IMG)) == sent_before
    else:  # connection-level failures of a GET are retried and the job goes through
        assert_ok(out)
    assert_ok(run({**JOB, "loras": [{"name": "detail_tweaker", "weight": 0.5}]}))
    assert_volume_clean(models_dir)


def test_forge_stuck_after_failed_model_load_asks_for_refresh(forge_replay, monkeypatch, models_dir):
    """Recorded on Forge (stuck_1, stuck_2): a failed module load leaves sd_model None and every
    later generation answers 500 AttributeError 'NoneType' ... 'sd_checkpoint_info'."""
    point_worker_at(monkeypatch, forge_replay.url, models_dir, backend="forge")
    assert_ok(run())
    forge_replay.respond_sequence("POST", TXT2IMG, ["stuck_1_txt2img_override_module_corrupt_500",
                                                   "stuck_2_txt2img_plain_500"])
    first = run()
    assert first["error_type"] == "a1111_error", first
    assert "Failed to recognize model type" in first["error"]
    second = run()
    assert second["error_type"] == "a1111_error", second
    assert "sd_checkpoint_info" in second["error"]
    assert second.get("refresh_worker") is True, "Forge cannot recover by itself: the worker must be recycled"
    assert_volume_clean(models_dir)


# --------------------------------------------------------------------------- downloads
@pytest.fixture
def dl_env(worker_env, models_dir, monkeypatch):
    """worker_env + fast download retries; the replay server lists files placed in MODELS_DIR."""
    worker_env.models_dir = models_dir
    monkeypatch.setenv("DOWNLOAD_ATTEMPTS", "2")
    monkeypatch.setenv("DOWNLOAD_BACKOFF_S", "0.01")
    monkeypatch.setenv("DOWNLOAD_READ_TIMEOUT_S", "3")
    return worker_env


def _lora_job(url: str, name: str) -> dict:
    return {**JOB, "loras": [{"url": url, "name": name, "weight": 0.5}]}


CORRUPT = {
    # Civitai's answer to a failed auth, served as if it were the file.
    "json_page": (200, "application/json", b'{"error":"Unauthorized","message":"The creator requires login"}', None),
    "garbage": (200, "application/octet-stream", os.urandom(4096), None),
    "truncated": (200, "application/octet-stream", lora_bytes(), 300),
    "server_error": (500, "text/plain", b"upstream broke", None),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_download_leaves_nothing_and_next_job_succeeds(dl_env, files_server, models_dir, case):
    base, files = files_server
    files.files["/bad.safetensors"] = CORRUPT[case]
    out = run(_lora_job(f"{base}/bad.safetensors", "bad_lora"))
    assert out["error_type"] == "download_failed", out
    assert not dl_env.sent("POST", TXT2IMG)[1:], "nothing was generated with a model that failed"
    assert not list((models_dir / "loras").glob("bad_lora*")), "a corrupt file is never visible under its name"
    assert_volume_clean(models_dir)
    files.files["/good.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    ok = run(_lora_job(f"{base}/good.safetensors", "good_lora"))
    assert_ok(ok)
    assert "<lora:good_lora:0.5>" in dl_env.sent("POST", TXT2IMG)[-1]["prompt"]
    assert_volume_clean(models_dir)


def test_sha256_mismatch_is_refused(dl_env, files_server, models_dir):
    base, files = files_server
    files.files["/x.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    out = run({**JOB, "loras": [{"url": f"{base}/x.safetensors", "name": "pinned", "sha256": "0" * 64}]})
    assert out["error_type"] == "download_failed" and "sha256" in out["error"], out
    assert not list((models_dir / "loras").glob("pinned*"))
    assert_volume_clean(models_dir)


_DISK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.environ["REPO"])
    from handler import handler
    out = []
    for name in ("big_lora", "small_lora"):
        r = handler({"id": name, "input": {"action": "prefetch", "loras": [
            {"url": os.environ["BASE"] + "/" + name + ".safetensors", "name": name}]}})
        out.append(r)
    print("RESULT " + json.dumps(out))
""")


def _tmpfs_supported() -> bool:
    try:
        r = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _disk_env(base: str, models: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"A1111_PID_FILE", "A1111_LOG_FILE"}}
    env.update(REPO=str(REPO), BASE=base, MODELS_DIR=str(models), DOWNLOAD_ALLOW_PRIVATE="1",
               DOWNLOAD_ATTEMPTS="2", DOWNLOAD_BACKOFF_S="0.01", A1111_URL="http://127.0.0.1:9")
    return env


def _check_disk_results(results: list[dict], models: Path) -> None:
    big, small = results
    assert big["error_type"] == "download_failed", big
    assert "disk is full" in big["error"], big
    assert small.get("models") and small["models"][0]["name"] == "small_lora", small


def test_full_disk_during_download_tmpfs(files_server, tmp_path):
    """A REAL full disk: MODELS_DIR is a 1 MiB tmpfs mounted in a private user+mount namespace
    (``unshare -r -m``), and a 4 MiB model is downloaded into it; then a small one fits."""
    if not _tmpfs_supported():
        pytest.skip("unprivileged user+mount namespaces are not permitted here (see the /dev/full variant)")
    base, files = files_server
    files.files["/big_lora.safetensors"] = (200, "application/octet-stream", lora_bytes(dim=8, rows=250_000), None)
    files.files["/small_lora.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    models = tmp_path / "models"
    models.mkdir()
    script = tmp_path / "disk.py"
    script.write_text(_DISK_SCRIPT)
    inner = (f"mount -t tmpfs -o size=1m tmpfs {models} && mkdir -p {models}/loras && "
             f"{sys.executable} {script}; rc=$?; "
             # What is left on the tmpfs, listed before the namespace (and the tmpfs) goes away.
             f"echo LEFT $(cd {models} && find . -type f | sort | tr '\\n' ' '); "
             f"echo REGISTRY $(cat {models}/cache_registry.json 2>/dev/null | tr -d '\\n'); exit $rc")
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", inner], env=_disk_env(base, models),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    results = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    _check_disk_results(results, models)
    left = next(line for line in lines if line.startswith("LEFT"))[4:].split()
    assert not [f for f in left if f.endswith(".part") or "/.downloads/" in f], left
    assert "./loras/big_lora.safetensors" not in left and "./loras/small_lora.safetensors" in left, left
    registry = json.loads(next(line for line in lines if line.startswith("REGISTRY"))[8:])
    assert set(registry["entries"]) == {"loras/small_lora.safetensors"}, registry


def test_full_disk_during_download_dev_full(dl_env, files_server, models_dir):
    """SIMULATED placement, real error: the download's part file is made a symlink to /dev/full,
    where every write fails with ENOSPC from the kernel. Runs where namespaces are not allowed."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available")
    base, files = files_server
    files.files["/big_lora.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    files.files["/small_lora.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    ref = {"url": f"{base}/big_lora.safetensors", "name": "big_lora"}
    part = models_dir / "loras" / parse_ref("lora", ref, None).part_name  # where the cache streams it
    part.symlink_to("/dev/full")
    big = run({"action": "prefetch", "loras": [ref]})
    small = run({"action": "prefetch", "loras": [{"url": f"{base}/small_lora.safetensors", "name": "small_lora"}]})
    _check_disk_results([big, small], models_dir)
    assert not part.is_symlink(), "the part was removed"
    assert not (models_dir / "loras" / "big_lora.safetensors").exists()
    assert_volume_clean(models_dir)


_REGISTRY_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.environ["REPO"])
    from handler import handler
    i = int(sys.argv[1])
    base = os.environ["BASE"]
    refs = [{"url": base + "/shared.safetensors", "name": "shared"}, {"url": base + f"/own{i}.safetensors",
            "name": f"own{i}"}]
    print("RESULT " + json.dumps(handler({"id": str(i), "input": {"action": "prefetch", "loras": refs}})))
""")


def test_several_processes_update_the_registry_at_once(files_server, models_dir, tmp_path):
    """Six worker processes prefetch at the same moment into one MODELS_DIR: one shared model
    (downloaded once) and one of their own each."""
    base, files = files_server
    n = 6
    files.files["/shared.safetensors"] = (200, "application/octet-stream", lora_bytes(dim=8), None)
    for i in range(n):
        files.files[f"/own{i}.safetensors"] = (200, "application/octet-stream", lora_bytes(dim=i + 1), None)
    script = tmp_path / "reg.py"
    script.write_text(_REGISTRY_SCRIPT)
    env = _disk_env(base, models_dir)
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    for (stdout, stderr), p in zip(outs, procs, strict=True):
        assert p.returncode == 0, stderr[-2000:]
        result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert "error" not in result, result
        assert sorted(m["name"] for m in result["models"])[-1].startswith("shared")
    assert files.hits["/shared.safetensors"] == 1, "the shared model was downloaded once for all workers"
    entries = json.loads((models_dir / "cache_registry.json").read_text())["entries"]
    expected = {"loras/shared.safetensors", *(f"loras/own{i}.safetensors" for i in range(n))}
    assert set(entries) == expected
    for rel, entry in entries.items():
        body = files.files["/" + rel.split("/", 1)[1]][2]
        assert entry["sha256"] == hashlib.sha256(body).hexdigest(), rel
        assert (models_dir / rel).read_bytes() == body, rel
    assert entries["loras/shared.safetensors"]["uses"] == n, "every worker's use was counted, none lost"
    assert_volume_clean(models_dir)
