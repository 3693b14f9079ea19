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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="model size in MiB (default 256)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--link-mbps", type=float, default=0.0,
                    help="cap the server at this many MB/s to emulate a network link (default: no cap)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    source = work / "served.safetensors"
    size = make_model(source, args.mb)
    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(str(source), port_q, stop, args.link_mbps), daemon=True)
    server.start()
    base = port_q.get(timeout=120)
    url = base + "/model.safetensors"
    try:
        models = work / "models"
        settings = dataclasses.replace(Settings.from_env(), models_dir=models, download_allow_private=True,
                                       cache_max_gb=None)
        cache = ModelCache(settings, Catalog())
        (models / "checkpoints").mkdir(parents=True)
        warm = models / "checkpoints" / "warmup.bin"
        plain_copy(url, warm, raw=True)  # warm the page cache and the server
        warm.unlink()
        iter_mb, raw_mb, cached = [], [], []
        for i in range(args.runs):
            for raw, out in ((False, iter_mb), (True, raw_mb)):
                dest = models / "checkpoints" / f"plain{i}.bin"
                out.append(size / plain_copy(url, dest, raw=raw) / 1e6)
                dest.unlink()
            t0 = time.perf_counter()
            placed = cache.ensure("checkpoint", {"url": url, "name": f"bench{i}"})
            cached.append(size / (time.perf_counter() - t0) / 1e6)
            assert placed.downloaded and placed.bytes == size
            if i:
                (models / placed.path).unlink()  # keep bench0 for the repeat request below
        before = sent_bytes(base)
        again = cache.ensure("checkpoint", {"url": url, "name": "bench0"})
        repeat_bytes = sent_bytes(base) - before
        baseline = max(statistics.median(iter_mb), statistics.median(raw_mb))  # the stricter comparison
        result = {
            "size_mb": round(size / 1e6, 1),
            "runs": args.runs,
            "link_mbps_cap": args.link_mbps or None,
            "plain_iter_content_mb_s": round(statistics.median(iter_mb), 1),
            "plain_raw_read_mb_s": round(statistics.median(raw_mb), 1),
            "cache_mb_s": round(statistics.median(cached), 1),
            "ratio": round(statistics.median(cached) / baseline, 3),
            "repeat_request_bytes": repeat_bytes,
            "repeat_downloaded": again.downloaded,
            "all_runs_mb_s": {"iter_content": [round(x) for x in iter_mb], "raw_read": [round(x) for x in raw_mb],
                              "cache": [round(x) for x in cached]},
        }
        print(json.dumps(result))
        print(f"cache download {result['cache_mb_s']} MB/s vs plain streamed copy {round(baseline, 1)} MB/s "
              f"(faster of the two baselines): ratio {result['ratio']} (target >= 0.9); a repeated request "
              f"transferred {repeat_bytes} bytes (target 0)")
    finally:
        stop.set()
        server.join(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
