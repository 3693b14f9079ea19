"""The worker's surroundings in a test: which A1111 it talks to, where its models live, and
the state it keeps per process, which must not carry over from one replay server to the next."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from a1111 import readiness
from a1111.state import reset_worker_state
from schemas.settings import Settings
from tests.contract import assert_txt2img_conforms
from tests.replay import ReplayServer
from tests.support.jobs import TXT2IMG

# A new replay server can get the port of an earlier one and must not inherit what the worker
# knew of it (client, readiness, name lists): tests call this between servers.
__all__ = ["reset_worker_state"]

# The model folders start.sh creates on the volume.
MODEL_FOLDERS = ("checkpoints", "loras", "embeddings", "controlnet", "adetailer", "upscalers")


def make_models_dir(root: Path) -> Path:
    for sub in MODEL_FOLDERS:
        (root / sub).mkdir(parents=True)
    return root


def point_worker_at(monkeypatch: pytest.MonkeyPatch, url: str, models_dir: Path, *, backend: str | None = None,
                    ready_timeout: float = 5, allow_private: bool = True) -> None:
    """Aim handler.handler at the A1111 at ``url`` and at ``models_dir``, unsupervised.

    ``backend`` None leaves WEBUI_BACKEND unset (the a1111 default). ``allow_private`` lets
    downloads reach the local file servers; without it a source on a public host fails at
    once on this offline machine instead of being retried.
    """
    monkeypatch.setenv("A1111_URL", url)
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("A1111_READY_TIMEOUT", f"{ready_timeout:g}")
    if backend is None:
        monkeypatch.delenv("WEBUI_BACKEND", raising=False)
    else:
        monkeypatch.setenv("WEBUI_BACKEND", backend)
    if allow_private:
        monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    else:
        monkeypatch.delenv("DOWNLOAD_ALLOW_PRIVATE", raising=False)
    # No pid file: nothing is supervised unless a test starts a process for it. No bucket:
    # results stay inline unless a test configures one.
    for name in ("A1111_PID_FILE", "A1111_LOG_FILE", "BUCKET_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def warm_up(srv: ReplayServer) -> None:
    """Run readiness now (its warm-up txt2img is sent once per server) and forget the requests,
    so a test can assert that a bad job sent no txt2img at all."""
    settings = Settings.from_env()
    readiness.ensure_ready(settings)
    srv.reset_requests()


def start_worker(backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_dir: Path,
                 catalog: Path | None = None) -> ReplayServer:
    """A replay server of ``backend`` (a tests.replay profile), the worker pointed at it with
    ``catalog`` (none by default) and already past its warm-up."""
    reset_worker_state()
    srv = ReplayServer(backend).start()
    point_worker_at(monkeypatch, srv.url, models_dir, backend="forge" if backend == "forge" else "a1111")
    monkeypatch.setenv("MODELS_CATALOG", str(catalog or tmp_path / "no-catalog.json"))
    monkeypatch.setenv("A1111_STATE_DIR", str(tmp_path / "state"))
    warm_up(srv)
    return srv


def stop_and_check(srv: ReplayServer) -> None:
    """Stop the server; every txt2img body it received must conform to the recorded schema."""
    srv.stop()
    for body in srv.sent("POST", TXT2IMG):
        assert_txt2img_conforms(body, "forge" if srv.backend == "forge" else "a1111")


@contextmanager
def running_worker(backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_dir: Path,
                   catalog: Path | None = None) -> Iterator[ReplayServer]:
    """``start_worker`` for the length of a block, then ``stop_and_check``."""
    srv = start_worker(backend, monkeypatch, tmp_path, models_dir, catalog)
    try:
        yield srv
    finally:
        stop_and_check(srv)


def write_catalog(path: Path, models: list[dict]) -> Path:
    path.write_text(json.dumps({"version": 1, "models": models, "presets": {}}))
    return path


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child worker, without the variables that configure
    one (RUNPOD_*, A1111_*, MODELS_*), so only ``extra`` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "A1111_", "MODELS_"))}
    env.update(extra)
    return env
