"""How long after A1111 starts answering does the worker notice? (target: <= 50 ms median)

Each run starts the replay A1111 server as a separate process that begins listening after
a random delay (like A1111 finishing its imports), while ``ensure_ready`` polls from this
process. The stand-in prints ``time.monotonic()`` right after its socket listens (the
monotonic clock is system-wide on Linux, so both processes share it); the worker's moment
of noticing is readiness's own ``noticed_at["api_up"]`` stamp. Baseline in the same run:
the same measurement with a naive 1-second poll loop, as many workers do.

    .venv/bin/python bench/readiness.py [--runs 20]

``--phases`` instead measures the cold-start phases (API up, model loaded, warm) through the
real start.sh, with start.sh's default flags and with ``A1111_HASHING=1``. The stand-in does
what A1111 does without ``--no-hashing`` before it answers: it sha256-hashes the checkpoint
(a sparse file of ``--checkpoint-gb``, so the figure is the hash's CPU cost with the file in
memory; a network volume adds its read time on top). A1111's own start-up (imports, model
weights) is not simulated, so the figures are the flags' difference, not a real cold start.

    .venv/bin/python bench/readiness.py --phases [--checkpoint-gb 2.1] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a1111 import readiness  # noqa: E402
from a1111.state import reset_worker_state, state_for  # noqa: E402
from a1111.supervisor import Supervisor  # noqa: E402
from schemas.settings import Settings  # noqa: E402

# Stand-in: sleep, listen, print the monotonic time it started answering, serve.
_STANDIN = """
import sys, time
from tests.replay import ReplayServer
time.sleep(float(sys.argv[2]))
srv = ReplayServer("a1111", port=int(sys.argv[1])).start()
print(time.monotonic(), flush=True)
time.sleep(60)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(port: int, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _STANDIN, str(port), str(delay)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def _answered_at(proc: subprocess.Popen) -> float:
    line = proc.stdout.readline() if proc.stdout else ""
    return float(line)


def run_ours(delay: float, state: Path) -> tuple[float, float]:
    """(notice latency in s, CPU share of one core this process used while waiting)"""
    port = _free_port()
    os.environ["A1111_URL"] = f"http://127.0.0.1:{port}"
    os.environ["A1111_READY_TIMEOUT"] = "30"
    settings = Settings.from_env()
    reset_worker_state()
    proc = _launch(port, delay)
    try:
        sup = Supervisor(pid_file=state / "a1111.pid", log_file=state / "a1111.log")
        sup.pid_file.write_text(f"{proc.pid}\n")
        w0, c0 = time.monotonic(), time.process_time()
        readiness.ensure_ready(settings, sup)
        cpu = (time.process_time() - c0) / (time.monotonic() - w0)
        noticed = state_for(settings).readiness.cold.noticed_at["api_up"]
        return noticed - _answered_at(proc), cpu
    finally:
        proc.kill()
        proc.wait()


def run_naive(delay: float, interval: float = 1.0) -> float:
    port = _free_port()
    proc = _launch(port, delay)
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=5).ok:
                    noticed = time.monotonic()
                    break
            except requests.RequestException:
                pass
            time.sleep(interval)
        return noticed - _answered_at(proc)
    finally:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Result:
    ours_s: list[float]    # notice latency of each run
    cpu: list[float]       # share of one core while waiting, each run
    naive_s: list[float]   # the baseline's notice latency, each run

    def lines(self) -> list[str]:
        ms = sorted(x * 1000 for x in self.ours_s)
        base = statistics.median(self.naive_s) * 1000
        med = statistics.median(ms)
        return [f"runs: {len(ms)}; notice latency after the stand-in answers (ms): "
                f"median {med:.1f}, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f}, max {ms[-1]:.1f}, min {ms[0]:.1f}",
                f"baseline (1 s poll loop, {len(self.naive_s)} runs): median {base:.1f} ms; "
                f"ratio ours/baseline {med / base:.3f}",
                f"CPU used by the waiting worker: median {statistics.median(self.cpu) * 100:.1f}% of one core",
                f"target <= 50 ms median: {'met' if med <= 50 else 'NOT met'}"]


def measure(runs: int, baseline_runs: int) -> Result:
    rng = random.Random(1234)
    ours: list[float] = []
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            latency, share = run_ours(rng.uniform(0.3, 0.8), Path(tmp))
            ours.append(latency)
            cpu.append(share)
    return Result(ours, cpu, [run_naive(rng.uniform(0.3, 0.8)) for _ in range(baseline_runs)])


# The stand-in for --phases: hash the checkpoint unless --no-hashing is among A1111's flags
# (as A1111's modules/hashes.py does at load, in 1 MiB blocks), then become the replay server.
_HASHING_STANDIN = """
import hashlib, os, sys
checkpoint, argv = sys.argv[1], sys.argv[2:]
if "--no-hashing" not in argv:
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
os.execv(sys.executable, [sys.executable, "-m", "tests.replay", *argv])
"""

# The handler for --phases: one job (waits until ready), then print the cold-start phases.
_PHASES_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from handler import handler
from a1111.readiness import cold_start
from schemas.settings import Settings
job = json.load(open(sys.argv[2]))
result = handler({"id": "bench", "input": job["input"]})
assert "error" not in result, result
print("PHASES " + json.dumps(cold_start(Settings.from_env())), flush=True)
"""


def run_phases(tmp: Path, checkpoint: Path, hashing: bool) -> dict:
    standin, driver = tmp / "standin.py", tmp / "driver.py"
    standin.write_text(_HASHING_STANDIN)
    driver.write_text(_PHASES_DRIVER)
    env = {**os.environ, "A1111_CMD": f"{sys.executable} {standin} {checkpoint}", "A1111_PORT": str(_free_port()),
           "A1111_STATE_DIR": str(tmp / "state"), "A1111_LOG_ECHO": "0", "MODELS_DIR": str(tmp / "models"),
           "HANDLER_CMD": f"{sys.executable} -u {driver} {ROOT} {ROOT / 'test_input.json'}",
           "A1111_HASHING": "1" if hashing else "0", "A1111_READY_TIMEOUT": "120"}
    proc = subprocess.run(["bash", str(ROOT / "start.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PHASES ")), None)
    if line is None:
        raise RuntimeError(f"no phases (status {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(line[len("PHASES "):])


def measure_phases(checkpoint_gb: float, runs: int) -> list[str]:
    keys = ("api_up_s", "model_loaded_s", "warm_s")
    out = [f"stand-in cold start through start.sh, checkpoint {checkpoint_gb:g} GB (sparse), median of {runs} runs:"]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = tmp / "model.safetensors"
        with open(checkpoint, "wb") as f:
            f.truncate(int(checkpoint_gb * 1e9))
        for label, hashing in (("start.sh defaults (--no-hashing)", False), ("A1111_HASHING=1", True)):
            phases = [run_phases(tmp, checkpoint, hashing) for _ in range(runs)]
            medians = {k: statistics.median(p[k] for p in phases) for k in keys}
            out.append(f"  {label}: " + ", ".join(f"{k} {medians[k]:.2f}" for k in keys))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline-runs", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="cold-start phases with and without --no-hashing")
    parser.add_argument("--checkpoint-gb", type=float, default=2.1, help="checkpoint size for --phases (SD1.5: 2.1)")
    args = parser.parse_args()
    if args.phases:
        print("\n".join(measure_phases(args.checkpoint_gb, min(args.runs, 5))))
        return 0
    print("\n".join(measure(args.runs, args.baseline_runs).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
