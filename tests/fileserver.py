"""A local HTTPS file server for tests whose model sources must be ``https://`` URLs.

trustme makes a throw-away CA and a certificate for 127.0.0.1; the ``https_files`` fixture
(tests/conftest.py) trusts it through REQUESTS_CA_BUNDLE, so the worker's real download
code runs unchanged. The cache's own tests use tests/test_cache_server.py (plain HTTP,
scripted faults, ranges) instead.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import trustme
from safetensors.numpy import save


class FileServer:
    """Serves ``files[path]`` (bytes) over HTTPS; ``forbidden`` paths answer 403, others 404.

    ``gets`` lists the request paths (query included) of the files actually served, in order.
    """

    def __init__(self, ca_dir: Path) -> None:
        self.files: dict[str, bytes] = {}
        self.forbidden: set[str] = set()
        self.gets: list[str] = []
        ca = trustme.CA()
        self.ca_pem = Path(ca_dir) / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._get(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if path in self.forbidden:
            h.send_error(403)
            return
        body = self.files.get(path)
        if body is None:
            h.send_error(404)
            return
        self.gets.append(h.path)
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def lora_bytes(base_model: str = "sd_v1") -> bytes:
    """A real (tiny) kohya-style SD1.5-shaped LoRA file whose metadata names ``base_model``."""
    tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 320), np.float16),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.zeros((320, 4), np.float16)}
    return save(tensors, metadata={"ss_base_model_version": base_model, "ss_network_dim": "4"})
