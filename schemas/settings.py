"""Configuration from the environment (the variables README lists), read once per job."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _default_models_dir() -> Path:
    volume = Path("/runpod-volume")
    return volume / "models" if volume.is_dir() else HERE / "models"


def _float_env(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from exc


def _count_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"environment variable {name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _flag_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    a1111_url: str
    ready_timeout_s: float
    models_dir: Path
    catalog_path: Path
    backend: str  # "a1111" | "forge"
    job_timeout_s: float
    cache_max_gb: float | None
    max_result_mb: float
    allow_pickle_models: bool
    download_allow_private: bool
    # Bounds on downloads (cache/bounds.py): a job's downloads and lease waits end by its
    # JOB_TIMEOUT; a prefetch job's by PREFETCH_TIMEOUT (seconds). A transfer slower than
    # DOWNLOAD_MIN_RATE_KBPS (kB/s, 0 = no minimum) over DOWNLOAD_RATE_WINDOW_S seconds is
    # given up: the defaults are far below any real CDN and only stop a trickling server.
    # Parallel ranged downloads are tuned by DOWNLOAD_CONNECTIONS (1-32, default 8; 1: one
    # stream), DOWNLOAD_PARALLEL_MIN_MB (default 64: smaller files come as one stream) and
    # DOWNLOAD_PARALLEL_BELOW_MBPS (default 200: a first piece that came over one stream at
    # least this fast keeps that stream; 0: never ranges); like DOWNLOAD_ATTEMPTS they are
    # read with the other transfer tunables in cache/transfer.py DownloadConfig.from_env.
    prefetch_timeout_s: float = 3600.0
    download_min_rate_kbps: float = 50.0
    download_rate_window_s: float = 30.0
    # Images a job sends in (init_images, mask, upscale images; inputs/): at most
    # INPUT_IMAGES_MAX per job, each at most INPUT_IMAGE_MAX_BYTES (encoded file, base64
    # decoded or fetched) and INPUT_IMAGE_MAX_PIXELS (width x height, read from the header
    # before the pixels are decoded: a small file can declare a huge image).
    input_images_max: int = 8
    input_image_max_bytes: int = 20_000_000
    input_image_max_pixels: int = 16_777_216

    @classmethod
    def from_env(cls) -> Settings:
        backend = os.environ.get("WEBUI_BACKEND", "a1111").strip().lower() or "a1111"
        if backend not in {"a1111", "forge"}:
            raise ValueError(f"WEBUI_BACKEND must be 'a1111' or 'forge', got {backend!r}")
        return cls(
            a1111_url=os.environ.get("A1111_URL", "http://127.0.0.1:3000").rstrip("/"),
            ready_timeout_s=_float_env("A1111_READY_TIMEOUT", 600.0) or 600.0,
            models_dir=Path(os.environ["MODELS_DIR"]) if os.environ.get("MODELS_DIR") else _default_models_dir(),
            catalog_path=Path(os.environ.get("MODELS_CATALOG") or HERE / "models.json"),
            backend=backend,
            # RunPod's default execution timeout is 600 s; stop a little before it so
            # the worker, not the platform, reports the timeout and interrupts A1111.
            job_timeout_s=_float_env("JOB_TIMEOUT", 570.0) or 570.0,
            cache_max_gb=_float_env("CACHE_MAX_GB", None),
            max_result_mb=_float_env("MAX_RESULT_MB", 20.0) or 20.0,
            allow_pickle_models=_flag_env("ALLOW_PICKLE_MODELS"),
            download_allow_private=_flag_env("DOWNLOAD_ALLOW_PRIVATE"),
            prefetch_timeout_s=_float_env("PREFETCH_TIMEOUT", 3600.0) or 3600.0,
            download_min_rate_kbps=max(_float_env("DOWNLOAD_MIN_RATE_KBPS", 50.0) or 0.0, 0.0),
            download_rate_window_s=max(_float_env("DOWNLOAD_RATE_WINDOW_S", 30.0) or 30.0, 0.1),
            input_images_max=_count_env("INPUT_IMAGES_MAX", 8),
            input_image_max_bytes=_count_env("INPUT_IMAGE_MAX_BYTES", 20_000_000),
            input_image_max_pixels=_count_env("INPUT_IMAGE_MAX_PIXELS", 16_777_216),
        )
