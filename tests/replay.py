"""Replay A1111 server: a real HTTP server on 127.0.0.1 answering from recorded exchanges.

Every answer is the JSON body a real A1111 v1.10.1 (or Forge) sent, taken unedited from
``tests/recordings/<backend>/``. Only transport details are adapted when serving: the body
is re-serialised without gzip, so ``content-length`` / ``content-encoding`` are recomputed.

Tests drive it to choose which recording a route answers with, to slow a generation down
(``/sdapi/v1/progress`` then advances through the recorded mid-generation polls), and to
inject faults (a dropped connection, a stall, a recorded error body with a chosen status).
It records every request it receives, so tests assert on the payload the handler produced.

Two behaviours are emulated rather than replayed, because a test needs them and no static
recording can show them:
- ``models_dir``: list routes also list model files found in that folder, each entry cloned
  from a recorded entry with its name/path fields set for the file (A1111 scans its folders).
  Upscaler files (``upscalers/*.pt|*.pth``) are listed only if they were there when the
  server started: A1111 v1.10 scans its upscaler folders at start and has no refresh route.
- ``POST /sdapi/v1/interrupt`` during a delayed txt2img (or img2img) makes that txt2img answer at once with
  the recorded interrupted response (``txt2img_interrupted_mid_generation``).

Run by hand: ``python -m tests.replay --port 3000 --backend a1111``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

RECORDINGS = Path(__file__).resolve().parent / "recordings"

# Which recording answers a route by default, per backend. Routes not listed here fall back
# to the first recording (by name) with status 200 for that method and path.
_DEFAULTS_A1111 = {
    ("GET", "/sdapi/v1/progress"): "get_progress_idle",
    ("GET", "/sdapi/v1/options"): "get_options",
    ("GET", "/sdapi/v1/sd-models"): "get_sd_models",
    ("GET", "/sdapi/v1/loras"): "get_loras",
    ("GET", "/sdapi/v1/embeddings"): "get_embeddings",
    ("GET", "/sdapi/v1/memory"): "get_memory",
    ("GET", "/sdapi/v1/scripts"): "ext_get_scripts",
    ("GET", "/sdapi/v1/script-info"): "ext_get_script_info",
    ("GET", "/sdapi/v1/extensions"): "ext_get_extensions",
    ("GET", "/controlnet/model_list"): "ext_controlnet_model_list",
    ("POST", "/sdapi/v1/txt2img"): "txt2img_minimal",
    ("POST", "/sdapi/v1/img2img"): "img2img_minimal",
    ("POST", "/sdapi/v1/extra-single-image"): "extra_single_image_nearest_2x",
    ("POST", "/sdapi/v1/extra-batch-images"): "extra_batch_images_two",
    ("GET", "/sdapi/v1/upscalers"): "get_upscalers",
    ("POST", "/sdapi/v1/interrupt"): "post_interrupt_idle",
    ("POST", "/sdapi/v1/skip"): "post_skip_idle",
    ("POST", "/sdapi/v1/options"): "post_options_clip_skip",
    ("POST", "/sdapi/v1/refresh-embeddings"): "post_refresh_embeddings",
}
_DEFAULTS_SDXL = {
    **_DEFAULTS_A1111,
    ("GET", "/sdapi/v1/options"): "sdxl_get_options",
    ("GET", "/sdapi/v1/sd-models"): "sdxl_get_sd_models",
    ("GET", "/sdapi/v1/loras"): "sdxl_get_loras",
    ("GET", "/sdapi/v1/embeddings"): "sdxl_get_embeddings",
    ("POST", "/sdapi/v1/txt2img"): "txt2img_sdxl_rubber_tile_preview",
}
_DEFAULTS_FORGE = {
    ("GET", "/sdapi/v1/progress"): "get_progress_idle",
    ("GET", "/sdapi/v1/options"): "get_options",
    ("GET", "/sdapi/v1/sd-models"): "get_sd_models",
    ("GET", "/sdapi/v1/sd-modules"): "get_sd_modules",
    ("GET", "/sdapi/v1/loras"): "get_loras",
    ("GET", "/sdapi/v1/embeddings"): "get_embeddings",
    ("GET", "/sdapi/v1/memory"): "get_memory",
    ("POST", "/sdapi/v1/txt2img"): "txt2img_minimal",
    ("POST", "/sdapi/v1/img2img"): "img2img_minimal",
    ("POST", "/sdapi/v1/interrupt"): "post_interrupt_idle",
    ("POST", "/sdapi/v1/skip"): "post_skip_idle",
    ("POST", "/sdapi/v1/options"): "post_options_clip_skip",
}
PROFILES = {
    "a1111": ("a1111", _DEFAULTS_A1111),
    "a1111-sdxl": ("a1111", _DEFAULTS_SDXL),
    "forge": ("forge", _DEFAULTS_FORGE),
}
_MID_GENERATION = [f"get_progress_mid_generation_{i}" for i in range(1, 5)]
_INTERRUPTED = "txt2img_interrupted_mid_generation"
_GENERATIONS = {("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img")}
_UPSCALER_EXTS = (".pt", ".pth")  # what A1111 v1.10 lists from its ESRGAN folder


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    json: Any
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    kind: str  # "drop" | "stall" | "status" | "truncate" | "garbage"
    seconds: float = 0.0
    status: int = 500
    body: Any = None
    times: int | None = None  # None: until cleared


def _load_folder(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


_CACHE: dict[str, dict[str, dict]] = {}
_CACHE_LOCK = threading.Lock()


def recordings(folder: str) -> dict[str, dict]:
    """All recordings of one folder (``a1111`` or ``forge``), loaded once per process."""
    with _CACHE_LOCK:
        if folder not in _CACHE:
            _CACHE[folder] = _load_folder(RECORDINGS / folder)
        return _CACHE[folder]


def _safetensors_header(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                return {}
            return json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return {}


class ReplayServer:
    """A threaded HTTP server replaying one backend's recordings; see the module docstring."""

    def __init__(self, backend: str = "a1111", *, host: str = "127.0.0.1", port: int = 0,
                 models_dir: Path | None = None) -> None:
        if backend not in PROFILES:
            raise ValueError(f"backend must be one of {sorted(PROFILES)}")
        self.backend = backend
        self.folder, defaults = PROFILES[backend]
        self.records = recordings(self.folder)
        self._routes: dict[tuple[str, str], list[str]] = {}
        for name, rec in self.records.items():
            req = rec["request"]
            key = (req["method"], urlsplit(req["path"]).path)
            if rec["response"]["status"] == 200 and key not in self._routes:
                self._routes[key] = [name]
        for key, name in defaults.items():
            self._routes[key] = [name]
        self.models_dir = models_dir
        self._upscaler_files: list[Path] = []  # models_dir's upscaler files when the server started
        self.requests: list[Received] = []
        self._faults: dict[tuple[str, str], _Fault] = {}
        self._delays: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._generation: dict[str, Any] | None = None  # the delayed txt2img in flight
        self._interrupt = threading.Event()
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ReplayServer:
        server = self

        class Handler(_Handler):
            replay = server

        if self.models_dir is not None:
            folder = Path(self.models_dir) / "upscalers"
            self._upscaler_files = sorted(f for f in folder.glob("*") if f.suffix.lower() in _UPSCALER_EXTS)

        self._httpd = ThreadingHTTPServer((self._host, self._port), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval makes stop() quick (the default 0.5 s adds up over many tests).
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="replay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._interrupt.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- test controls ---------------------------------------------------------------
    def recording(self, name: str) -> dict:
        """The stored record ``name`` of this backend's folder (a deep copy)."""
        return copy.deepcopy(self.records[name])

    def respond(self, method: str, path: str, name: str) -> None:
        self.respond_sequence(method, path, [name])

    def respond_sequence(self, method: str, path: str, names: list[str]) -> None:
        """Answer with these recordings one after another; the last one sticks."""
        for n in names:
            if n not in self.records:
                raise KeyError(f"no recording {n!r} in {self.folder}")
        with self._lock:
            self._routes[(method.upper(), path)] = list(names)

    def fault(self, method: str, path: str, kind: str, *, seconds: float = 0.0, status: int = 500,
              body: Any = None, times: int | None = None) -> None:
        """Misbehave on purpose on one route (fault injection), ``times`` times or until cleared."""
        if kind not in {"drop", "stall", "status", "truncate", "garbage"}:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults[(method.upper(), path)] = _Fault(kind, seconds, status, body, times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def delay(self, method: str, path: str, seconds: float) -> None:
        with self._lock:
            self._delays[(method.upper(), path)] = seconds

    def sent(self, method: str, path: str) -> list[Any]:
        """The JSON bodies received on one route, in order."""
        return [r.json for r in self.requests if r.method == method.upper() and r.path == path]

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- serving -----------------------------------------------------------------------
    def _take_fault(self, key: tuple[str, str]) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(key)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def _next_recording(self, key: tuple[str, str]) -> dict | None:
        with self._lock:
            names = self._routes.get(key)
            if not names:
                return None
            name = names.pop(0) if len(names) > 1 else names[0]
        return self.records[name]

    def answer(self, method: str, path: str) -> tuple[int, str, Any]:
        """(status, content type, body) for a request; body is JSON-able or a str."""
        key = (method, path)
        if key == ("GET", "/sdapi/v1/progress") and self._generation is not None:
            gen = self._generation
            frac = (time.monotonic() - gen["start"]) / max(gen["seconds"], 1e-6)
            name = _MID_GENERATION[min(int(frac * len(_MID_GENERATION)), len(_MID_GENERATION) - 1)]
            if name in self.records:
                return self._from_record(self.records[name])
        if key == ("POST", "/sdapi/v1/interrupt") and self._generation is not None:
            self._interrupt.set()
            rec = self.records.get("post_interrupt_during_generation")
            if rec is not None:
                return self._from_record(rec)
        rec = self._next_recording(key)
        if rec is None:
            known_path = any(p == path for (_, p) in self._routes)
            fallback = "get_on_txt2img_405" if known_path else "get_unknown_route_404"
            return self._from_record(self.records[fallback])
        status, ctype, body = self._from_record(rec)
        if self.models_dir is not None and status == 200:
            body = self._with_folder_models(path, body)
        return status, ctype, body

    @staticmethod
    def _from_record(rec: dict) -> tuple[int, str, Any]:
        resp = rec["response"]
        ctype = resp.get("headers", {}).get("content-type", "application/json")
        body = resp["json"] if "json" in resp else resp.get("text", "")
        return resp["status"], ctype, copy.deepcopy(body)

    def _with_folder_models(self, path: str, body: Any) -> Any:
        root = Path(self.models_dir)  # type: ignore[arg-type]
        if path == "/sdapi/v1/loras" and isinstance(body, list) and body:
            listed = {e["name"] for e in body}
            for f in sorted((root / "loras").glob("*.safetensors")):
                if f.stem in listed:
                    continue
                entry = copy.deepcopy(body[0])
                meta = _safetensors_header(f).get("__metadata__", {})
                entry.update(name=f.stem, alias=meta.get("ss_output_name", f.stem), path=str(f), metadata=meta)
                body.append(entry)
        elif path == "/sdapi/v1/sd-models" and isinstance(body, list) and body:
            listed = {e["model_name"] for e in body}
            for f in sorted((root / "checkpoints").glob("*.safetensors")):
                if f.stem in listed:
                    continue
                entry = copy.deepcopy(body[0])
                entry.update(title=f.name, model_name=f.stem, filename=str(f), hash=None, sha256=None)
                body.append(entry)
        elif path == "/sdapi/v1/upscalers" and isinstance(body, list) and body:
            listed = {e["name"] for e in body}
            template = next((e for e in body if e.get("model_name") == "ESRGAN_4x"), body[-1])
            for f in self._upscaler_files:
                if f.stem not in listed:
                    body.append({**template, "name": f.stem, "model_name": f.stem, "model_path": str(f)})
        elif path == "/sdapi/v1/embeddings" and isinstance(body, dict):
            loaded = body.setdefault("loaded", {})
            template = next(iter(loaded.values()), None) or next(iter(body.get("skipped", {}).values()), None)
            for f in sorted((root / "embeddings").glob("*.safetensors")):
                if f.stem in loaded or f.stem in body.get("skipped", {}) or template is None:
                    continue
                header = _safetensors_header(f)
                entry = dict(template)
                if "clip_g" in header:
                    entry.update(shape=2048, vectors=header["clip_g"]["shape"][0])
                elif header:
                    first = next(v for k, v in header.items() if k != "__metadata__")
                    entry.update(shape=first["shape"][-1], vectors=first["shape"][0])
                loaded[f.stem] = entry
        return body

    def run_generation(self, seconds: float) -> bool:
        """Hold a txt2img for ``seconds``; True if it was interrupted meanwhile."""
        self._interrupt.clear()
        self._generation = {"start": time.monotonic(), "seconds": seconds}
        try:
            return self._interrupt.wait(seconds)
        finally:
            self._generation = None


class _Handler(BaseHTTPRequestHandler):
    replay: ReplayServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms), a stall no real uvicorn server has.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _handle(self) -> None:
        srv = self.replay
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        key = (self.command, parts.path)
        with srv._lock:
            srv.requests.append(Received(self.command, parts.path, parse_qs(parts.query), body,
                                         {k.lower(): v for k, v in self.headers.items()}))
        fault = srv._take_fault(key)
        if fault is not None:
            if fault.kind == "drop":
                self._drop()
                return
            if fault.kind == "stall":
                time.sleep(fault.seconds)
            elif fault.kind == "status":
                self._send(fault.status, "application/json", fault.body)
                return
            elif fault.kind == "truncate":
                payload = json.dumps(srv.answer(*key)[2]).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self._drop()
                return
            elif fault.kind == "garbage":
                self._send(200, "text/html", "<html><body>502 Bad Gateway</body></html>")
                return
        delay = srv._delays.get(key, 0.0)
        if delay and key in _GENERATIONS:
            if srv.run_generation(delay) and _INTERRUPTED in srv.records:
                self._send(*ReplayServer._from_record(srv.records[_INTERRUPTED]))
                return
        elif delay:
            time.sleep(delay)
        self._send(*srv.answer(*key))

    def _drop(self) -> None:
        # Close without an HTTP answer, as a process that died mid-request would.
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _send(self, status: int, ctype: str, body: Any) -> None:
        if isinstance(body, str) and not ctype.startswith("application/json"):
            payload = body.encode()
        else:
            payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--server-name", "--host", dest="host", default="127.0.0.1")
    parser.add_argument("--backend", choices=sorted(PROFILES), default=os.environ.get("REPLAY_BACKEND", "a1111"))
    parser.add_argument("--models-dir", type=Path, help="also list model files found in this folder")
    parser.add_argument("--txt2img-delay", type=float, default=0.0, help="seconds each txt2img takes")
    parser.add_argument("--listen-after", type=float, default=0.0,
                        help="wait this long before listening (a slow A1111 start)")
    parser.add_argument("--exit-after", type=float, default=0.0,
                        help="exit with status 1 after this many seconds of serving (A1111 dying)")
    parser.add_argument("--argv-file", type=Path, help="write this process's argv here, one per line")
    # start.sh passes A1111's own flags (--api --nowebui --xformers ...): accept and ignore them.
    args, _unknown = parser.parse_known_args(argv)
    if args.argv_file:
        args.argv_file.write_text("\n".join(sys.argv if argv is None else argv) + "\n")
    if args.listen_after:
        time.sleep(args.listen_after)
    server = ReplayServer(args.backend, host=args.host, port=args.port, models_dir=args.models_dir)
    if args.txt2img_delay:
        server.delay("POST", "/sdapi/v1/txt2img", args.txt2img_delay)
    server.start()
    print(f"replay A1111 ({args.backend}) serving on {server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.exit_after:
            stop.wait(args.exit_after)
            server.stop()
            return 0 if stop.is_set() else 1
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
