"""Shared fixtures: the replay A1111 server, an isolated worker environment, an HTTPS file server.

The helpers behind them are in tests/support/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replay import ReplayServer
from tests.support.servers import FileServer
from tests.support.worker import make_models_dir, point_worker_at, reset_worker_state


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
    return make_models_dir(tmp_path / "models")


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, replay: ReplayServer, models_dir: Path) -> ReplayServer:
    """Point the handler at the replay server and a private MODELS_DIR; returns the server."""
    point_worker_at(monkeypatch, replay.url, models_dir)
    return replay


@pytest.fixture
def forge_env(monkeypatch: pytest.MonkeyPatch, forge_replay: ReplayServer, models_dir: Path) -> ReplayServer:
    """``worker_env`` for Forge (WEBUI_BACKEND=forge, the Forge recordings); returns the server."""
    point_worker_at(monkeypatch, forge_replay.url, models_dir, backend="forge")
    return forge_replay


@pytest.fixture
def fresh_worker_state() -> Iterator[None]:
    """For modules that start many servers: no test inherits an earlier one's worker state."""
    reset_worker_state()
    yield
    reset_worker_state()


@pytest.fixture
def https_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A local HTTPS file server (model URLs must be https), trusted through REQUESTS_CA_BUNDLE."""
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_pem))
        yield srv


@pytest.fixture
def files_server(https_files: FileServer) -> tuple[str, FileServer]:
    """``https_files`` as (base URL, server), the pair the fault and security tests unpack."""
    return https_files.url, https_files
