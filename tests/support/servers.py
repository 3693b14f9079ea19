"""Local servers on 127.0.0.1 standing in for the hosts models are downloaded from.

- ``FileServer``: static files over HTTPS, for ``url`` sources (the worker accepts https only).
  The ``https_files`` and ``files_server`` fixtures (tests/conftest.py) make the worker trust
  its throw-away CA through REQUESTS_CA_BUNDLE, so the real download code runs unchanged.
- ``ModelServer``: plain HTTP with behaviours scripted per path (faults, ranges, redirects,
  required tokens) and the Hugging Face ``resolve`` routes, for the cache's own tests and for
  Civitai and the Hub, whose base URLs are configurable.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import trustme
from requests.structures import CaseInsensitiveDict

# A reply a FileServer path can be given instead of plain bytes:
# (status, content type, body, cut_at); with cut_at the full length is announced, only that
# many bytes are sent, and the connection closes (a transfer cut short).
Reply = tuple[int, str, bytes, int | None]

WRITE_CHUNK = 256 * 1024
ANNOUNCE_MAX = 32 * 1024 * 1024  # an "announce" reply ends here, so a test of old code ends too


@dataclass
class Seen:
    method: str
    path: str
    headers: Mapping[str, str]  # case-insensitive, as HTTP headers are


class _LocalServer:
    """A ThreadingHTTPServer in a daemon thread, behind TLS when given a folder for its CA;
    subclasses answer GET and HEAD in ``_handle``."""

    def __init__(self, host: str = "127.0.0.1", *, ca_dir: Path | None = None, names: tuple[str, ...] = ()) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._handle(self, head=False)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                server._handle(self, head=True)

            def log_message(self, *args: Any) -> None:
                pass  # a line per request would bury the test's own output

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.ca_pem: Path | None = None
        scheme = "http"
        if ca_dir is not None:
            ca = trustme.CA()
            self.ca_pem = Path(ca_dir) / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_pem))
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(host, *names).configure_cert(ctx)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://{host}:{self.port}"
        # A short poll interval makes leaving the context quick (the default 0.5 s adds up).
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        raise NotImplementedError

    @staticmethod
    def _send_head(h: BaseHTTPRequestHandler, code: int, ctype: str, length: int,
                   headers: Mapping[str, str]) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(length))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()

    def _send_plain(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str,
                    headers: Mapping[str, str]) -> None:
        self._send_head(h, code, ctype, len(body), headers)
        if h.command != "HEAD":
            h.wfile.write(body)


class FileServer(_LocalServer):
    """Serves ``files[path]`` over HTTPS: bytes (200, application/octet-stream) or a ``Reply``.

    ``forbidden`` paths answer 403, ``redirects`` paths 302 to their URL, other paths not in
    ``files`` 404. ``gets`` lists the request paths (query included) answered from ``files``,
    in order; ``hits`` counts every GET per path (query dropped), answered or not, so a test
    can show nothing was even asked for; ``seen`` records every GET with its headers. ``names``
    are host names its certificate is valid for besides 127.0.0.1 (for a test's stand-in DNS).
    """

    def __init__(self, ca_dir: Path, *, names: tuple[str, ...] = ()) -> None:
        super().__init__(ca_dir=ca_dir, names=names)
        self.files: dict[str, bytes | Reply] = {}
        self.forbidden: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.gets: list[str] = []
        self.hits: dict[str, int] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?")[0]
        if not head:
            with self._lock:
                self.hits[path] = self.hits.get(path, 0) + 1
                self.seen.append(Seen(h.command, h.path, CaseInsensitiveDict(h.headers.items())))
        if path in self.redirects:
            self._send_plain(h, 302, b"", "text/plain", {"Location": self.redirects[path]})
            return
        if path in self.forbidden:
            h.send_error(403)
            return
        reply = self.files.get(path)
        if reply is None:
            h.send_error(404)
            return
        if isinstance(reply, bytes):
            reply = (200, "application/octet-stream", reply, None)
        status, ctype, body, cut = reply
        if not head:
            with self._lock:
                self.gets.append(h.path)
        self._send_head(h, status, ctype, len(body), {})
        if head:
            return
        try:
            h.wfile.write(body if cut is None else body[:cut])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up first: nothing left to answer
        if cut is not None:
            h.close_connection = True


@dataclass
class _Route:
    data: bytes
    behaviours: list[Any]
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None       # required "Authorization" header value
    chunk_delay: float = 0.0      # seconds between 256 KB chunks (to make transfers overlap)
    ranges: bool = True           # False: Range is ignored (200, the whole file, no Accept-Ranges)


class ModelServer(_LocalServer):
    """Model files over plain HTTP, each path with a list of behaviours consumed one per GET
    (the last one sticks):

    "ok" (200, or 206 for a Range request), ("status", code, body, content_type),
    "truncate" (announce the full length, send half, close: a connection cut mid-body),
    ("stall", seconds) (send half, then go silent: a stalled transfer), ("redirect", url),
    ("trickle", bytes_per_s, seconds) (announce the full length, then send a byte at a time at
    that rate for at most that long, then close: a server that keeps a download alive without
    ever finishing it), ("announce", length) (announce ``length`` bytes, then send the data
    over and over until the client hangs up or ANNOUNCE_MAX bytes went out: a server claiming
    a huge file), "whole" (200 with the whole file even to a Range request: a server, or a CDN
    node, that stops honouring ranges).

    ``Range: bytes=a-`` and ``bytes=a-b`` are answered with 206 (unless the route was added
    with ``ranges=False``); ``peak`` is the most GETs of one path answered at the same time.

    It also answers the Hugging Face ``/{repo}/resolve/{revision}/{file}`` routes that
    ``hf_hub_download`` calls (HEAD for metadata, then GET), with the headers the Hub sends.
    Every request is recorded in ``seen``, and the body bytes sent are counted per path in ``sent``.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.routes: dict[str, _Route] = {}
        self.seen: list[Seen] = []
        self.sent: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self._active: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    # -- configuration ----------------------------------------------------------------------
    def add(self, path: str, data: bytes, behaviours: list[Any] | None = None, **kw: Any) -> str:
        self.routes[path] = _Route(data, list(behaviours or ["ok"]), **kw)
        return self.url + path

    def add_hf(self, repo: str, file: str, data: bytes, *, revision: str = "main", commit: str = "c" * 40,
               behaviours: list[Any] | None = None, auth: str | None = None, lfs: bool = True,
               reported_sha256: str | None = None) -> None:
        """A file as the Hub serves it: X-Repo-Commit, and for an LFS file its sha256 as
        X-Linked-Etag and ETag, its size as X-Linked-Size. A file kept in git (``lfs=False``)
        gets only an ETag holding its git blob id (sha1), as on the Hub. ``reported_sha256``
        makes the Hub report another sha256 than the data's (a body damaged on the way)."""
        if lfs:
            sha = reported_sha256 or hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"',
                       "X-Linked-Size": str(len(data))}
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
            headers = {"X-Repo-Commit": commit, "ETag": f'"{blob}"'}
        for rev in {revision, commit}:
            self.add(f"/{repo}/resolve/{rev}/{file}", data, behaviours, headers=headers, auth=auth)

    def gets(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and s.path.split("?", 1)[0] == path]

    def ranges(self, path: str) -> list[tuple[int, int | None]]:
        """The (first, last) byte of each Range GET of ``path`` (last None when open-ended), in order."""
        out: list[tuple[int, int | None]] = []
        for s in self.gets(path):
            if (rng := s.headers.get("Range", "")).startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                out.append((int(first), int(last) if last else None))
        return out

    # -- serving ------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self._active[path] += 1
            self.peak[path] = max(self.peak[path], self._active[path])
        try:
            self._answer(h, path, head=head)
        finally:
            with self.lock:
                self._active[path] -= 1

    def _answer(self, h: BaseHTTPRequestHandler, path: str, *, head: bool) -> None:
        with self.lock:
            self.seen.append(Seen(h.command, h.path, CaseInsensitiveDict(h.headers.items())))
            route = self.routes.get(path)
            behaviour = None
            if route is not None:
                behaviour = route.behaviours[0]
                if not head and len(route.behaviours) > 1:
                    route.behaviours.pop(0)
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
        if isinstance(behaviour, tuple) and behaviour[0] in ("trickle", "announce"):
            return self._misbehave(h, path, route, behaviour)
        data = route.data
        start, stop, status = 0, len(data), 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head and route.ranges and behaviour != "whole":
            first, _, last = rng[6:].partition("-")
            start, stop = int(first), min(int(last) + 1, len(data)) if last else len(data)
            status = 206
        body = data[start:stop]
        headers = {"Accept-Ranges": "bytes"} if route.ranges else {}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        self._send_head(h, status, route.content_type, len(body), {**headers, **route.headers})
        if head:
            return
        limit = len(body)
        if behaviour == "truncate" or (isinstance(behaviour, tuple) and behaviour[0] == "stall"):
            limit = len(body) // 2
        self._write(h, path, body[:limit], route.chunk_delay)
        if isinstance(behaviour, tuple) and behaviour[0] == "stall":
            time.sleep(behaviour[1])
        h.close_connection = True

    def _misbehave(self, h: BaseHTTPRequestHandler, path: str, route: _Route, behaviour: tuple) -> None:
        announced = behaviour[1] if behaviour[0] == "announce" else len(route.data)
        self._send_head(h, 200, route.content_type, announced, route.headers)
        h.close_connection = True
        if h.command == "HEAD":
            return
        if behaviour[0] == "announce":
            while self.sent[path] < ANNOUNCE_MAX and self._write(h, path, route.data, 0.0):
                pass
            return
        _, rate, seconds = behaviour
        end = time.monotonic() + seconds
        for i in range(len(route.data)):
            if time.monotonic() >= end or not self._write(h, path, route.data[i:i + 1], 1 / rate):
                return

    def _write(self, h: BaseHTTPRequestHandler, path: str, data: bytes, delay: float) -> bool:
        view = memoryview(data)
        try:
            for i in range(0, len(view), WRITE_CHUNK):
                h.wfile.write(view[i:i + WRITE_CHUNK])
                with self.lock:
                    self.sent[path] += len(view[i:i + WRITE_CHUNK])
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return False  # the client hung up
        return True
