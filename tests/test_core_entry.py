"""handler.py as a module (no side effects on import) and as RunPod's entry (__main__)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.replay import ReplayServer
from tests.support.worker import child_env

ROOT = Path(__file__).resolve().parent.parent


def test_import_has_no_side_effects(tmp_path):
    code = ("import sys, threading, handler; "
            "print(json.dumps({'runpod': 'runpod' in sys.modules, 'threads': threading.active_count(), "
            "'handler': callable(handler.handler)}))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True,
                         env=child_env(A1111_URL="http://127.0.0.1:9"), timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"runpod": False, "threads": 1, "handler": True}
    assert out.stderr == ""


def test_main_runs_a_job_at_info_level(tmp_path):
    with ReplayServer("a1111") as srv:
        job = {"input": {"prompt": "a photo of a cat", "sampler_name": "Euler", "steps": 1}}
        out = subprocess.run(
            [sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=ROOT, capture_output=True,
            text=True, timeout=120,
            env=child_env(A1111_URL=srv.url, MODELS_DIR=str(tmp_path / "models"), A1111_STATE_DIR=str(tmp_path / "s"),
                     MODELS_CATALOG=str(tmp_path / "none.json"), A1111_READY_TIMEOUT="10"))
        logs = out.stdout + out.stderr
        assert out.returncode == 0, logs[-2000:]
        assert "completed successfully" in logs
        # The SDK's DEBUG level would log the whole job input ("Retrieved local job") and output.
        assert "DEBUG" not in logs and "Retrieved local job" not in logs
        assert len(srv.sent("POST", "/sdapi/v1/txt2img")) == 2  # readiness warm-up + the job
