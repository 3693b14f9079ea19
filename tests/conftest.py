"""Shared fixtures: the replay A1111 server, an isolated worker environment, an HTTPS file server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fileserver import FileServer
from tests.replay import ReplayServer


@pytest.fixture
def replay() -> Iterator[ReplayServer]:
    with ReplayServer("a1111") as srv:
        yield srv


@pytest.fixture
def sdxl_replay() -> Iterator[ReplayServer]:
    with ReplayServer("a1111-sdxl") as srv:
        yield srv


@pytest.fixture
def forge_replay() -> Iterator[ReplayServer]:
    with ReplayServer("forge") as srv:
        yield srv


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for sub in ("checkpoints", "loras", "embeddings", "controlnet", "adetailer", "upscalers"):
        (root / sub).mkdir(parents=True)
    return root


def _point_worker_at(monkeypatch: pytest.MonkeyPatch, srv: ReplayServer, models_dir: Path) -> None:
    monkeypatch.setenv("A1111_URL", srv.url)
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("A1111_READY_TIMEOUT", "5")
    monkeypatch.delenv("BUCKET_ENDPOINT_URL", raising=False)


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, replay: ReplayServer, models_dir: Path) -> ReplayServer:
    """Point the handler at the replay server and a private MODELS_DIR; returns the server."""
    _point_worker_at(monkeypatch, replay, models_dir)
    monkeypatch.delenv("WEBUI_BACKEND", raising=False)
    return replay


@pytest.fixture
def forge_env(monkeypatch: pytest.MonkeyPatch, forge_replay: ReplayServer, models_dir: Path) -> ReplayServer:
    """``worker_env`` for Forge (WEBUI_BACKEND=forge, the Forge recordings); returns the server."""
    _point_worker_at(monkeypatch, forge_replay, models_dir)
    monkeypatch.setenv("WEBUI_BACKEND", "forge")
    return forge_replay


@pytest.fixture
def https_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A local HTTPS file server (model URLs must be https), trusted through REQUESTS_CA_BUNDLE."""
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_pem))
        yield srv
