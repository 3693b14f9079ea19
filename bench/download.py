"""Download throughput of the model cache: one stream vs ranged connections, from a local server.

    .venv/bin/python bench/download.py [--mb 256] [--runs 5] [--conn-mbps 50] [--connections N]

A local HTTP/1.1 server (in its own process, sending with os.sendfile so it takes little CPU
from the client, answering ``Range``, keeping connections alive) serves one real safetensors
file. Two cases, each run alternating its measurements:
  capped:   every connection is limited to --conn-mbps MB/s (as CDNs cap one connection),
            the sum of them unlimited: ModelCache.ensure with DOWNLOAD_CONNECTIONS=1 (one
            stream) and with N connections. Target: parallel >= 4x single.
  uncapped: the same two, plus a plain streamed copy (requests, raw reads, no hash) as the
            baseline. Target: parallel not slower than single; single >= 0.9x the plain copy.
Each ensure is the whole path: hashing, safetensors header check, atomic rename, registry,
lease. It reports medians (MB/s), the ratios, and the body bytes the server sent for a
repeated request of a model already placed (target 0).
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cache import ModelCache  # noqa: E402
from cache.catalog import Catalog  # noqa: E402
from cache.transfer import DownloadConfig  # noqa: E402
from schemas.settings import Settings  # noqa: E402

CHUNK = 1 << 20
STEP = 1 << 20  # bytes per sendfile call when pacing a capped connection


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a ``bytes=a-b`` / ``bytes=a-`` header, or None for the whole file."""
    if not header or not header.startswith("bytes="):
        return None
    first, _, last = header[6:].partition("-")
    return int(first), min(int(last) + 1, size) if last else size


def _send(sock: int, fd: int, start: int, end: int, conn_mbps: float, sent: list[int], lock) -> None:
    """``os.sendfile`` [start, end), never ahead of ``conn_mbps`` on average when it is set."""
    t0 = time.perf_counter()
    offset = start
    while offset < end:
        if conn_mbps:
            ahead = (offset - start) / (conn_mbps * 1e6) - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
        n = os.sendfile(sock, fd, offset, min(end - offset, STEP) if conn_mbps else end - offset)
        if n == 0:
            break
        offset += n
        with lock:
            sent[0] += n


def _serve(path: str, port_q, stop, conn_mbps: float = 0.0) -> None:
    """The file at any path (with ranges), each connection capped at ``conn_mbps`` MB/s;
    /_stats answers the body bytes sent so far."""
    size = os.path.getsize(path)
    sent = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as CDNs do

        def log_message(self, *a) -> None:
            pass

        def _head(self, code: int, length: int, headers: dict[str, str]) -> None:
            self.send_response(code)
            for k, v in {"Content-Length": str(length), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.flush()

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/_stats":
                body = json.dumps({"sent": sent[0]}).encode()
                self._head(200, len(body), {"Content-Type": "application/json"})
                self.wfile.write(body)
                return
            rng = _range(self.headers.get("Range"), size)
            start, end = rng or (0, size)
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if rng:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self._head(206 if rng else 200, end - start, headers)
            try:
                with open(path, "rb") as f:
                    _send(self.connection.fileno(), f.fileno(), start, end, conn_mbps, sent, lock)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client hung up (it had the bytes it asked for)

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


def plain_copy(url: str, dest: Path) -> float:
    """Stream the body to a file with raw reads, nothing else (the cache's own read loop, so
    the ratio isolates hashing and verification)."""
    t0 = time.perf_counter()
    with requests.get(url, stream=True, timeout=(10, 60)) as r:
        r.raise_for_status()
        with open(dest, "wb") as f:
            while chunk := r.raw.read(CHUNK, decode_content=True):
                f.write(chunk)
    return time.perf_counter() - t0


def sent_bytes(base: str) -> int:
    return int(requests.get(base + "/_stats", timeout=10).json()["sent"])


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="model size in MiB (default 256)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--conn-mbps", type=float, default=50.0,
                    help="cap each connection at this many MB/s in the capped case (default 50)")
    ap.add_argument("--connections", type=int, default=DownloadConfig.from_env().connections,
                    help="DOWNLOAD_CONNECTIONS for the parallel runs (default: the worker's)")
    return ap.parse_args()


@contextlib.contextmanager
def served(source: Path, conn_mbps: float) -> Iterator[str]:
    """The base URL of a server for ``source`` running in its own process, stopped on exit."""
    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(str(source), port_q, stop, conn_mbps), daemon=True)
    server.start()
    try:
        yield port_q.get(timeout=120)
    finally:
        stop.set()
        server.join(10)


def cache_with(settings: Settings, connections: int) -> ModelCache:
    """A cache whose downloads use ``connections`` (read from the environment, as a worker's)."""
    os.environ["DOWNLOAD_CONNECTIONS"] = str(connections)
    return ModelCache(settings, Catalog())


def measure(caches: dict[str, ModelCache], models: Path, url: str, size: int, runs: int, tag: str,
            plain: bool) -> dict[str, list[float]]:
    """MB/s of each cache (and of a plain copy), alternating, ``runs`` times; each placed model
    is removed again except the first (kept for the repeat request)."""
    out: dict[str, list[float]] = {name: [] for name in ([*caches, "plain"] if plain else caches)}
    folder = models / "checkpoints"
    for i in range(runs):
        if plain:
            dest = folder / f"plain{i}.bin"
            out["plain"].append(size / plain_copy(url, dest) / 1e6)
            dest.unlink()
        for name, cache in caches.items():
            t0 = time.perf_counter()
            placed = cache.ensure("checkpoint", {"url": url, "name": f"{tag}_{name}{i}"})
            out[name].append(size / (time.perf_counter() - t0) / 1e6)
            assert placed.downloaded and placed.bytes == size
            if (tag, name, i) != ("capped", "single", 0):
                (models / placed.path).unlink()
    return out


def run_case(settings: Settings, models: Path, source: Path, size: int, args: argparse.Namespace, *,
             conn_mbps: float, tag: str) -> tuple[dict[str, float], dict[str, list[float]], int | None]:
    caches = {"single": cache_with(settings, 1), "parallel": cache_with(settings, args.connections)}
    with served(source, conn_mbps) as base:
        url = base + "/model.safetensors"
        warm = models / "checkpoints" / "warmup.bin"
        plain_copy(url, warm)  # the page cache and the server warmed
        warm.unlink()
        runs = measure(caches, models, url, size, args.runs, tag, plain=not conn_mbps)
        repeat = None
        if tag == "capped":
            before = sent_bytes(base)
            again = caches["parallel"].ensure("checkpoint", {"url": url, "name": "capped_single0"})
            repeat = sent_bytes(base) - before
            assert not again.downloaded
    return {name: statistics.median(v) for name, v in runs.items()}, runs, repeat


def main() -> None:
    args = _args()
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        source = work / "served.safetensors"
        size = make_model(source, args.mb)
        models = work / "models"
        (models / "checkpoints").mkdir(parents=True)
        settings = dataclasses.replace(Settings.from_env(), models_dir=models, download_allow_private=True,
                                       cache_max_gb=None)
        capped, capped_runs, repeat = run_case(settings, models, source, size, args, conn_mbps=args.conn_mbps,
                                               tag="capped")
        free, free_runs, _ = run_case(settings, models, source, size, args, conn_mbps=0.0, tag="uncapped")
        result = {
            "size_mb": round(size / 1e6, 1), "runs": args.runs, "connections": args.connections,
            "conn_mbps_cap": args.conn_mbps, "load_avg_1m": round(os.getloadavg()[0], 2),
            "capped_single_mb_s": round(capped["single"], 1), "capped_parallel_mb_s": round(capped["parallel"], 1),
            "capped_ratio": round(capped["parallel"] / capped["single"], 2),
            "uncapped_plain_mb_s": round(free["plain"], 1), "uncapped_single_mb_s": round(free["single"], 1),
            "uncapped_parallel_mb_s": round(free["parallel"], 1),
            "uncapped_ratio": round(free["parallel"] / free["single"], 2),
            "single_vs_plain": round(free["single"] / free["plain"], 3),
            "repeat_request_bytes": repeat,
            "all_runs_mb_s": {f"capped_{k}": [round(x) for x in v] for k, v in capped_runs.items()}
            | {f"uncapped_{k}": [round(x) for x in v] for k, v in free_runs.items()},
        }
        print(json.dumps(result))
        print(f"capped at {args.conn_mbps:g} MB/s per connection: one stream {result['capped_single_mb_s']} MB/s, "
              f"{args.connections} connections {result['capped_parallel_mb_s']} MB/s: ratio {result['capped_ratio']} "
              f"(target >= 4); uncapped: ratio {result['uncapped_ratio']} (target >= 1), one stream vs plain copy "
              f"{result['single_vs_plain']}; a repeated request transferred {repeat} bytes (target 0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
