"""How long after A1111 starts answering does the worker notice? (target: <= 50 ms median)

Each run starts the replay A1111 server as a separate process that begins listening after
a random delay (like A1111 finishing its imports), while ``ensure_ready`` polls from this
process. The stand-in prints ``time.monotonic()`` right after its socket listens (the
monotonic clock is system-wide on Linux, so both processes share it); the worker's moment
of noticing is readiness's own ``noticed_at["api_up"]`` stamp. Baseline in the same run:
the same measurement with a naive 1-second poll loop, as many workers do.

    .venv/bin/python bench/readiness.py [--runs 20]
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline-runs", type=int, default=5)
    args = parser.parse_args()
    print("\n".join(measure(args.runs, args.baseline_runs).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
