"""start.sh, run for real, with the replay A1111 server standing in for A1111.

``A1111_CMD`` makes start.sh launch ``python -m tests.replay`` (which accepts and ignores
A1111's flags, and records its argv); the handler runs in the foreground as in the image,
either through the RunPod SDK's own local modes (``--test_input``, ``--rp_serve_api``) or
through a small driver that calls ``handler.handler`` for jobs and prints whole results
(the SDK's local modes drop ``error_type`` and other keys of a failed job).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from tests.support.ports import free_port
from tests.support.worker import child_env

ROOT = Path(__file__).resolve().parent.parent
START = ROOT / "start.sh"
PY = sys.executable

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, *, standin: str = "", ready_timeout: float = 20, volume: bool = True, **extra: str) -> dict:
    port = free_port()
    volume_dir = tmp_path / "runpod-volume"
    if volume:
        volume_dir.mkdir(exist_ok=True)
    env = child_env()
    env.update(
        A1111_CMD=f"{PY} -m tests.replay --argv-file {tmp_path / 'argv.txt'} {standin}".strip(),
        A1111_PORT=str(port),
        A1111_STATE_DIR=str(tmp_path / "state"),
        A1111_LOG_ECHO="0",
        A1111_READY_TIMEOUT=str(ready_timeout),
        VOLUME_DIR=str(volume_dir),
        HANDLER_CMD=f"{PY} -u {ROOT / 'handler.py'}",
        DOWNLOAD_ALLOW_PRIVATE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _driver(tmp_path: Path, jobs: list[dict], wait_for_a1111_exit_before: int | None = None) -> str:
    """A handler command: run these jobs through handler.handler, print each result as JSON
    (optionally waiting, before job N, until the A1111 process start.sh launched has exited)."""
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from handler import handler
        from a1111.supervisor import Supervisor
        jobs = json.loads({json.dumps(json.dumps(jobs))})
        for i, job in enumerate(jobs):
            if i == {wait_for_a1111_exit_before!r}:
                end = time.monotonic() + 30
                while Supervisor.from_env().alive() and time.monotonic() < end:
                    time.sleep(0.05)
            t0 = time.monotonic()
            result = handler(job)
            print("RESULT " + json.dumps({{"elapsed": time.monotonic() - t0, "result": result}}), flush=True)
    """))
    return f"{PY} -u {script}"


def _results(stdout: str) -> list[dict]:
    return [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]


def _standin_pid(env: dict) -> int:
    return int(Path(env["A1111_STATE_DIR"], "a1111.pid").read_text())


def _gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


JOB = {"id": "job-1", "input": json.loads((ROOT / "test_input.json").read_text())["input"]}


def test_serves_a_job_once_the_standin_is_ready_and_passes_loopback_flags(tmp_path):
    # The stand-in takes 1.5 s to start listening, like A1111 importing torch. A wrapper
    # records the environment A1111 gets, then becomes the replay server.
    wrapper = tmp_path / "a1111-standin.sh"
    wrapper.write_text(f'#!/bin/sh\necho "$HF_HOME" > {tmp_path / "hf_home.txt"}\n'
                       f'exec {PY} -m tests.replay "$@"\n')
    wrapper.chmod(0o755)
    env = _env(tmp_path, standin="--listen-after 1.5")
    env["A1111_CMD"] = f"{wrapper} --argv-file {tmp_path / 'argv.txt'} --listen-after 1.5"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(START), "--test_input", json.dumps(JOB)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "completed successfully" in out
    assert time.monotonic() - t0 >= 1.5  # the job waited for the stand-in

    argv = Path(tmp_path / "argv.txt").read_text().split("\n")
    # --nowebui without --server-name would listen on every interface (A1111 then binds 0.0.0.0)
    assert argv[argv.index("--server-name") + 1] == "127.0.0.1"
    for flag in ("--api", "--nowebui", "--xformers", "--opt-sdp-attention", "--skip-prepare-environment",
                 "--skip-install", "--no-download-sd-model"):
        assert flag in argv
    assert argv[argv.index("--port") + 1] == env["A1111_PORT"]
    models = Path(env["VOLUME_DIR"]) / "models"
    assert argv[argv.index("--ckpt-dir") + 1] == str(models / "checkpoints")
    assert argv[argv.index("--lora-dir") + 1] == str(models / "loras")
    assert argv[argv.index("--embeddings-dir") + 1] == str(models / "embeddings")
    assert argv[argv.index("--controlnet-dir") + 1] == str(models / "controlnet")
    assert argv[argv.index("--esrgan-models-path") + 1] == str(models / "upscalers")
    for kind in ("checkpoints", "loras", "embeddings", "controlnet", "adetailer", "upscalers"):
        assert (models / kind).is_dir()
    # A1111's Hugging Face cache (tokenizer configs, ADetailer detectors) is on the volume
    assert (models / ".cache" / "huggingface").is_dir()
    assert (tmp_path / "hf_home.txt").read_text().strip() == str(models / ".cache" / "huggingface")
    # the stand-in is stopped when the handler exits
    assert _gone(_standin_pid(env))


def test_test_input_json_works_as_shipped(tmp_path):
    env = _env(tmp_path, A1111_LOG_ECHO="1")  # as in the image: A1111's output also goes to the container log
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Using test_input.json as job input." in out and "completed successfully" in out
    serving = f"replay A1111 (a1111) serving on http://127.0.0.1:{env['A1111_PORT']}"
    assert serving in proc.stderr
    assert serving in Path(env["A1111_STATE_DIR"], "a1111.log").read_text()


def test_extra_args_and_no_volume_fallback_with_warning(tmp_path):
    worker = tmp_path / "worker"
    worker.mkdir()
    env = _env(tmp_path, volume=False, WORKER_DIR=str(worker),
               A1111_ARGS_EXTRA="--no-half-vae --medvram-sdxl",
               HANDLER_CMD=_driver(tmp_path, [{"id": "h", "input": {"action": "health"}}]))
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING: no network volume" in proc.stderr
    argv = (tmp_path / "argv.txt").read_text().split("\n")
    assert argv[argv.index("--ckpt-dir") + 1] == str(worker / "models" / "checkpoints")
    assert argv[-3:-1] == ["--no-half-vae", "--medvram-sdxl"]  # extra flags come last
    assert (worker / "models" / "loras").is_dir()
    assert "--text-encoder-dir" not in argv  # a Forge-only flag: A1111 1.10 would refuse to start


def test_forge_gets_its_module_folders(tmp_path):
    env = _env(tmp_path, standin="--backend forge", WEBUI_BACKEND="forge",
               HANDLER_CMD=_driver(tmp_path, [{"id": "h", "input": {"action": "health"}}]))
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [res] = _results(proc.stdout)
    assert res["result"]["backend"] == "forge", res
    argv = (tmp_path / "argv.txt").read_text().split("\n")
    models = Path(env["VOLUME_DIR"]) / "models"
    # Flux's ae / clip_l / t5xxl live here; Forge lists them in /sdapi/v1/sd-modules
    assert argv[argv.index("--vae-dir") + 1] == str(models / "vae")
    assert argv[argv.index("--text-encoder-dir") + 1] == str(models / "text_encoder")
    assert (models / "vae").is_dir() and (models / "text_encoder").is_dir()


def test_never_ready_fails_clearly_at_the_deadline(tmp_path):
    env = _env(tmp_path, standin="--listen-after 120", ready_timeout=3,
               HANDLER_CMD=_driver(tmp_path, [JOB]))
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    [res] = _results(proc.stdout)
    result = res["result"]
    assert result["error_type"] == "a1111_unavailable", result
    # "did not become ready", or "is still not ready" when the handler's own start (imports on a
    # loaded machine) already took the 3 s: both are the clear failure at the deadline.
    assert re.search(r"A1111 (did not become|is still not) ready within A1111_READY_TIMEOUT=3 s", result["error"])
    assert "refresh_worker" not in result
    assert took < 15  # the deadline counts from the process start, plus the handler's imports
    assert _gone(_standin_pid(env))


def test_standin_death_fails_the_next_job_at_once_with_log_tail(tmp_path):
    # The stand-in serves for 6 s, then exits with status 1 (A1111 crashing).
    jobs = [JOB, {**JOB, "id": "job-2"}]
    env = _env(tmp_path, standin="--exit-after 6", HANDLER_CMD=_driver(tmp_path, jobs, wait_for_a1111_exit_before=1))
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    first, second = _results(proc.stdout)
    assert "error" not in first["result"], first
    result = second["result"]
    assert result["error_type"] == "a1111_unavailable", result
    assert result["refresh_worker"] is True
    assert second["elapsed"] < 2.0  # at once, not after a timeout
    assert any("replay A1111 (a1111) serving on" in line for line in result["log_tail"])


def test_sigterm_stops_handler_and_a1111(tmp_path):
    port = free_port()
    env = _env(tmp_path)
    args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    proc = subprocess.Popen(["bash", str(START), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.post(f"http://127.0.0.1:{port}/runsync", json={"input": JOB["input"]}, timeout=30)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the handler's dev API never came up"
                time.sleep(0.2)
        assert r.json()["status"] == "COMPLETED", r.text
        pid = _standin_pid(env)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert _gone(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a1111_hides_its_folder_options(tmp_path):
    # --hide-ui-dir-config makes A1111 refuse the folder options (outdir_*, temp_dir) through
    # the API as well, so no request can point its output somewhere else.
    env = _env(tmp_path, HANDLER_CMD=_driver(tmp_path, [{"id": "h", "input": {"action": "health"}}]))
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    argv = (tmp_path / "argv.txt").read_text().split("\n")
    assert "--hide-ui-dir-config" in argv


def _health_run(tmp_path: Path, **extra: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """start.sh with the stand-in and one health job; the stand-in's argv and the LD_PRELOAD that
    it and the handler were started with are recorded (wrappers write it, then exec)."""
    tmp_path.mkdir(exist_ok=True)
    wrapper = tmp_path / "a1111-standin.sh"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s" "$LD_PRELOAD" > {tmp_path / "preload.txt"}\n'
                       f'exec {PY} -m tests.replay "$@"\n')
    wrapper.chmod(0o755)
    handler = tmp_path / "handler.sh"
    handler.write_text(f'#!/bin/sh\nprintf "%s" "$LD_PRELOAD" > {tmp_path / "handler_preload.txt"}\n'
                       f'exec {_driver(tmp_path, [{"id": "h", "input": {"action": "health"}}])}\n')
    handler.chmod(0o755)
    env = _env(tmp_path, HANDLER_CMD=str(handler), **extra)
    env["A1111_CMD"] = f"{wrapper} --argv-file {tmp_path / 'argv.txt'}" + (
        " --backend forge" if extra.get("WEBUI_BACKEND") == "forge" else "")
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run(["bash", str(START)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (tmp_path / "argv.txt").read_text().split("\n"), proc


def test_fast_start_flags_are_on_by_default(tmp_path):
    # --no-hashing: no sha256 of every checkpoint at load; --no-half-vae: no fp16 VAE overflow;
    # ControlNet's preprocessor weights on the volume, not in the container.
    argv, _ = _health_run(tmp_path)
    assert "--no-hashing" in argv and "--no-half-vae" in argv and "--hide-ui-dir-config" in argv
    annotators = Path(tmp_path / "runpod-volume" / "models" / "controlnet" / "annotators")
    assert argv[argv.index("--controlnet-annotator-models-path") + 1] == str(annotators)
    assert annotators.is_dir()
    assert "--controlnet-preprocessor-models-dir" not in argv  # Forge's name for it


def test_each_opt_out_removes_its_flag(tmp_path):
    argv, _ = _health_run(tmp_path / "hash", A1111_HASHING="1")
    assert "--no-hashing" not in argv and "--no-half-vae" in argv
    argv, _ = _health_run(tmp_path / "vae", A1111_HALF_VAE="1")
    assert "--no-half-vae" not in argv and "--no-hashing" in argv


def test_forge_gets_its_preprocessor_folder_flag(tmp_path):
    argv, _ = _health_run(tmp_path, WEBUI_BACKEND="forge")
    annotators = tmp_path / "runpod-volume" / "models" / "controlnet" / "annotators"
    assert argv[argv.index("--controlnet-preprocessor-models-dir") + 1] == str(annotators)
    assert "--controlnet-annotator-models-path" not in argv  # sd-webui-controlnet's flag: Forge would refuse it
    assert "--no-hashing" in argv and "--no-half-vae" in argv


def _fake_tcmalloc(tmp_path: Path, name: str = "libtcmalloc_minimal.so.4") -> Path:
    """A file where the library would be: ld.so warns that it cannot preload it and goes on,
    which is enough to see what start.sh handed to A1111."""
    libs = tmp_path / "libs"
    libs.mkdir(parents=True, exist_ok=True)
    (libs / name).write_bytes(b"not a real library")
    return libs


def test_tcmalloc_is_preloaded_for_a1111_only_when_present(tmp_path):
    libs = _fake_tcmalloc(tmp_path)
    _, proc = _health_run(tmp_path, A1111_TCMALLOC_DIRS=f"{tmp_path / 'none'} {libs}")
    assert (tmp_path / "preload.txt").read_text() == str(libs / "libtcmalloc_minimal.so.4")
    assert f"tcmalloc: {libs / 'libtcmalloc_minimal.so.4'}" in proc.stderr
    assert (tmp_path / "handler_preload.txt").read_text() == ""  # the handler gains nothing from it


def test_tcmalloc_full_library_is_the_fallback_and_absence_is_fine(tmp_path):
    libs = _fake_tcmalloc(tmp_path / "full", "libtcmalloc.so.4")
    _health_run(tmp_path / "full", A1111_TCMALLOC_DIRS=str(libs))
    assert (tmp_path / "full" / "preload.txt").read_text() == str(libs / "libtcmalloc.so.4")
    _, proc = _health_run(tmp_path / "absent", A1111_TCMALLOC_DIRS=str(tmp_path / "absent"))
    assert (tmp_path / "absent" / "preload.txt").read_text() == ""
    assert "tcmalloc: not found" in proc.stderr


def test_tcmalloc_opt_out(tmp_path):
    libs = _fake_tcmalloc(tmp_path)
    _health_run(tmp_path, A1111_TCMALLOC_DIRS=str(libs), A1111_TCMALLOC="0")
    assert (tmp_path / "preload.txt").read_text() == ""
