"""A real HTTP server on 127.0.0.1 serving model files, with scripted faults, for the cache tests.

Each path gets a list of behaviours consumed one per GET (the last one sticks):
"ok" (200, or 206 for a Range request), ("status", code, body, content_type),
"truncate" (announce the full length, send half, close: a connection cut mid-body),
("stall", seconds) (send half, then go silent: a stalled transfer), ("redirect", url).
It also answers the Hugging Face ``/{repo}/resolve/{revision}/{file}`` routes that
``hf_hub_download`` calls (HEAD for metadata, then GET), with the headers the Hub sends.
Everything it was asked is recorded, and the body bytes it sent are counted per path.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from requests.structures import CaseInsensitiveDict
from safetensors.numpy import save

WRITE_CHUNK = 256 * 1024


def safetensors_bytes(tensors: dict[str, np.ndarray] | None = None, *, size: int = 64 * 1024, seed: int = 0,
                      metadata: dict[str, str] | None = None) -> bytes:
    """A real safetensors file (random float32 values) of about ``size`` bytes."""
    if tensors is None:
        rng = np.random.default_rng(seed)
        tensors = {"lora_unet_down.weight": rng.standard_normal(max(1, size // 4), dtype=np.float32)}
    return save(tensors, metadata=metadata)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Route:
    data: bytes
    behaviours: list[Any]
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None       # required "Authorization" header value
    chunk_delay: float = 0.0      # seconds between 256 KB chunks (to make transfers overlap)


class ModelServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, _Route] = {}
        self.seen: list[Seen] = []
        self.sent: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                server._handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- configuration ----------------------------------------------------------------------
    def add(self, path: str, data: bytes, behaviours: list[Any] | None = None, **kw: Any) -> str:
        self.routes[path] = _Route(data, list(behaviours or ["ok"]), **kw)
        return self.url + path

    def add_hf(self, repo: str, file: str, data: bytes, *, revision: str = "main", commit: str = "c" * 40,
               behaviours: list[Any] | None = None, auth: str | None = None) -> None:
        """A file as the Hub serves it: X-Repo-Commit, and the LFS sha256 as X-Linked-Etag."""
        sha = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"',
                   "X-Linked-Size": str(len(data))}
        for rev in {revision, commit}:
            self.add(f"/{repo}/resolve/{rev}/{file}", data, behaviours, headers=headers, auth=auth)

    def gets(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and s.path.split("?", 1)[0] == path]

    # -- serving ------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.seen.append(Seen(h.command, h.path, CaseInsensitiveDict(h.headers.items())))
            route = self.routes.get(path)
            behaviour = None
            if route is not None:
                behaviour = route.behaviours[0]
                if not head and len(route.behaviours) > 1:
                    route.behaviours.pop(0)
        if path == "/_stats":  # for bench/download.py, which runs the server in another process
            with self.lock:
                stats = {"sent": dict(self.sent), "gets": sum(1 for s in self.seen if s.method == "GET")}
            return self._send_plain(h, 200, json.dumps(stats).encode(), "application/json", {})
        if route is None:
            return self._send_plain(h, 404, b'{"error":"Not Found"}', "application/json",
                                    {"X-Error-Code": "EntryNotFound"} if "/resolve/" in path else {})
        if route.auth is not None and h.headers.get("Authorization") != route.auth:
            return self._send_plain(h, 401, b'{"error":"Unauthorized"}', "application/json", {})
        if isinstance(behaviour, tuple) and behaviour[0] == "status":
            _, code, body, ctype = behaviour
            return self._send_plain(h, code, body, ctype, {})
        if isinstance(behaviour, tuple) and behaviour[0] == "redirect":
            return self._send_plain(h, 302, b"", "text/plain", {"Location": behaviour[1]})
        data = route.data
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng[6:].split("-", 1)[0])
            status = 206
        body = data[start:]
        h.send_response(status)
        h.send_header("Content-Type", route.content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in route.headers.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        limit = len(body)
        if behaviour == "truncate" or (isinstance(behaviour, tuple) and behaviour[0] == "stall"):
            limit = len(body) // 2
        self._write(h, path, body[:limit], route.chunk_delay)
        if isinstance(behaviour, tuple) and behaviour[0] == "stall":
            time.sleep(behaviour[1])
        h.close_connection = True

    def _write(self, h: BaseHTTPRequestHandler, path: str, data: bytes, delay: float) -> None:
        view = memoryview(data)
        try:
            for i in range(0, len(view), WRITE_CHUNK):
                h.wfile.write(view[i:i + WRITE_CHUNK])
                with self.lock:
                    self.sent[path] += len(view[i:i + WRITE_CHUNK])
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_plain(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str,
                    headers: dict[str, str]) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


# -------------------------------------------------------------------- self-checks of the helper
def test_server_serves_ranges_and_scripted_faults():
    import requests

    data = safetensors_bytes(size=1000)
    with ModelServer() as srv:
        url = srv.add("/f.safetensors", data, [("status", 500, b"boom", "text/plain"), "ok"])
        assert requests.get(url, timeout=5).status_code == 500
        r = requests.get(url, headers={"Range": "bytes=10-"}, timeout=5)
        assert r.status_code == 206 and r.content == data[10:]
        assert r.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
        assert len(srv.gets("/f.safetensors")) == 2
