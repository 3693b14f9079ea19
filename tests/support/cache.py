"""The model cache in a test: quick-failing download settings, a cache over them, and what a
download left on the volume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cache import ModelCache
from cache.catalog import Catalog
from schemas.settings import Settings

# Variables a developer's shell or an earlier test may have set that change what a download does.
_UNSET = ("HF_TOKEN", "CIVITAI_TOKEN", "CACHE_MAX_GB", "ALLOW_PICKLE_MODELS", "CIVITAI_BASE_URL", "HF_ENDPOINT",
          "JOB_TIMEOUT", "PREFETCH_TIMEOUT", "DOWNLOAD_MIN_RATE_KBPS", "DOWNLOAD_RATE_WINDOW_S")


def fast_downloads(monkeypatch: pytest.MonkeyPatch, models_dir: Path, *, attempts: int = 3,
                   read_timeout_s: float = 1, **extra: str) -> None:
    """Point the cache at ``models_dir`` with retries that take milliseconds, not seconds, and
    the local (loopback) test servers allowed; ``extra`` sets more variables (NAME=value)."""
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("DOWNLOAD_BACKOFF_S", "0.01")
    monkeypatch.setenv("DOWNLOAD_ATTEMPTS", str(attempts))
    monkeypatch.setenv("DOWNLOAD_READ_TIMEOUT_S", f"{read_timeout_s:g}")
    for var in _UNSET:
        monkeypatch.delenv(var, raising=False)
    for var, value in extra.items():
        monkeypatch.setenv(var, value)


def make_cache(catalog: dict | None = None, **over: object) -> ModelCache:
    """A ModelCache over the environment's settings, with ``over`` replacing settings fields."""
    settings = dataclasses.replace(Settings.from_env(), **over)
    return ModelCache(settings, Catalog.from_dict(catalog) if catalog is not None else Catalog())


def registry(models_dir: Path) -> dict:
    path = models_dir / "cache_registry.json"
    return json.loads(path.read_text())["entries"] if path.exists() else {}


def leftovers(models_dir: Path) -> list[str]:
    """Files a failed download must not leave behind (parts, staging, half files)."""
    return [p.relative_to(models_dir).as_posix() for p in models_dir.rglob("*")
            if p.is_file() and not p.relative_to(models_dir).as_posix().startswith(".locks/")
            and p.name != "cache_registry.json"]
