"""Shared fixtures: the replay A1111 server and an isolated worker environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, replay: ReplayServer, models_dir: Path) -> ReplayServer:
    """Point the handler at the replay server and a private MODELS_DIR; returns the server."""
    monkeypatch.setenv("A1111_URL", replay.url)
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("A1111_READY_TIMEOUT", "5")
    monkeypatch.delenv("WEBUI_BACKEND", raising=False)
    monkeypatch.delenv("BUCKET_ENDPOINT_URL", raising=False)
    return replay
