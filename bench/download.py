"""Download throughput of the model cache vs a plain streamed copy, from the same local server.

    .venv/bin/python bench/download.py [--mb 256] [--runs 3]

A local HTTP server (in its own process, sending with os.sendfile so it takes little CPU
from the client) serves one real safetensors file. Each run measures,
alternately:
  baseline: requests GET, stream, write the chunks to a file in the target folder (no hash);
  cache:    ModelCache.ensure(...) for the same URL under a fresh name: hashing while
            streaming, safetensors header check, atomic rename, registry update, lease.
It reports the median throughput of each, their ratio (target >= 0.9), and the body bytes
the server sent for a repeated request of a model already placed (target 0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cache import ModelCache  # noqa: E402
from cache.catalog import Catalog  # noqa: E402
from schemas.settings import Settings  # noqa: E402

CHUNK = 1 << 20


def _serve(path: str, port_q, stop, link_mbps: float = 0.0) -> None:
    """A minimal HTTP server sending the file with os.sendfile (little CPU, so the client side's
    work is what gets measured); /_stats answers the body bytes sent so far."""
    size = os.path.getsize(path)
    sent = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/_stats":
                body = json.dumps({"sent": sent[0]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                offset = 0
                while offset < size:
                    if link_mbps:  # emulate a network link: never ahead of link_mbps on average
                        ahead = offset / (link_mbps * 1e6) - (time.perf_counter() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                    step = min(size - offset, 4 << 20) if link_mbps else size - offset
                    n = os.sendfile(self.connection.fileno(), f.fileno(), offset, step)
                    if n == 0:
                        break
                    offset += n
                    with lock:
                        sent[0] += n

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port_q.put(f"http://127.0.0.1:{httpd.server_address[1]}")
    stop.wait()
    httpd.shutdown()


def make_model(path: Path, mb: int) -> int:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"model.weight": np.arange(mb * 1024 * 1024 // 2, dtype=np.float16)}, str(path))
    return path.stat().st_size


def plain_copy(url: str, dest: Path, *, raw: bool) -> float:
    """Stream the body to a file, nothing else: requests' iter_content idiom, or raw reads
    (the read loop the cache itself uses, so the ratio isolates hashing and verification)."""
    t0 = time.perf_counter()
    with requests.get(url, stream=True, timeout=(10, 60)) as r:
        r.raise_for_status()
        with open(dest, "wb") as f:
            if raw:
                while chunk := r.raw.read(CHUNK, decode_content=True):
                    f.write(chunk)
            else:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
    return time.perf_counter() - t0


def sent_bytes(base: str) -> int:
    return int(requests.get(base + "/_stats", timeout=10).json()["sent"])


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="model size in MiB (default 256)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--link-mbps", type=float, default=0.0,
                    help="cap the server at this many MB/s to emulate a network link (default: no cap)")
    return ap.parse_args()


@contextlib.contextmanager
def served(source: Path, link_mbps: float) -> Iterator[str]:
    """The base URL of a server for ``source`` running in its own process, stopped on exit."""
    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(str(source), port_q, stop, link_mbps), daemon=True)
    server.start()
    try:
        yield port_q.get(timeout=120)
    finally:
        stop.set()
        server.join(10)


@dataclass
class Samples:
    """Throughput of each run in MB/s."""
    iter_content: list[float] = field(default_factory=list)
    raw_read: list[float] = field(default_factory=list)
    cache: list[float] = field(default_factory=list)


def measure(cache: ModelCache, models: Path, url: str, size: int, runs: int) -> Samples:
    """Alternate the two plain copies and a cache download of the same URL, ``runs`` times;
    the cache's first model (bench0) stays for the repeat request."""
    (models / "checkpoints").mkdir(parents=True)
    warm = models / "checkpoints" / "warmup.bin"
    plain_copy(url, warm, raw=True)  # warm the page cache and the server
    warm.unlink()
    out = Samples()
    for i in range(runs):
        for raw, plain in ((False, out.iter_content), (True, out.raw_read)):
            dest = models / "checkpoints" / f"plain{i}.bin"
            plain.append(size / plain_copy(url, dest, raw=raw) / 1e6)
            dest.unlink()
        t0 = time.perf_counter()
        placed = cache.ensure("checkpoint", {"url": url, "name": f"bench{i}"})
        out.cache.append(size / (time.perf_counter() - t0) / 1e6)
        assert placed.downloaded and placed.bytes == size
        if i:
            (models / placed.path).unlink()
    return out


def summary(samples: Samples, size: int, args: argparse.Namespace, repeat_bytes: int,
            repeat_downloaded: bool) -> dict:
    med = {name: statistics.median(values) for name, values in dataclasses.asdict(samples).items()}
    baseline = max(med["iter_content"], med["raw_read"])  # the stricter comparison
    return {
        "size_mb": round(size / 1e6, 1),
        "runs": args.runs,
        "link_mbps_cap": args.link_mbps or None,
        "plain_iter_content_mb_s": round(med["iter_content"], 1),
        "plain_raw_read_mb_s": round(med["raw_read"], 1),
        "cache_mb_s": round(med["cache"], 1),
        "ratio": round(med["cache"] / baseline, 3),
        "repeat_request_bytes": repeat_bytes,
        "repeat_downloaded": repeat_downloaded,
        "all_runs_mb_s": {name: [round(x) for x in values] for name, values in dataclasses.asdict(samples).items()},
    }


def main() -> None:
    args = _args()
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        source = work / "served.safetensors"
        size = make_model(source, args.mb)
        models = work / "models"
        settings = dataclasses.replace(Settings.from_env(), models_dir=models, download_allow_private=True,
                                       cache_max_gb=None)
        cache = ModelCache(settings, Catalog())
        with served(source, args.link_mbps) as base:
            url = base + "/model.safetensors"
            samples = measure(cache, models, url, size, args.runs)
            before = sent_bytes(base)
            again = cache.ensure("checkpoint", {"url": url, "name": "bench0"})
            repeat_bytes = sent_bytes(base) - before
        result = summary(samples, size, args, repeat_bytes, again.downloaded)
        baseline = max(result["plain_iter_content_mb_s"], result["plain_raw_read_mb_s"])
        print(json.dumps(result))
        print(f"cache download {result['cache_mb_s']} MB/s vs plain streamed copy {baseline} MB/s "
              f"(faster of the two baselines): ratio {result['ratio']} (target >= 0.9); a repeated request "
              f"transferred {repeat_bytes} bytes (target 0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
