"""An input image given as an https URL, fetched by the worker (A1111 is never given a URL).

It goes through the model downloads' own fetch (cache/download.py ``fetch_url``), so the
same rules hold: https only, every address of every redirect hop checked (no loopback,
private or link-local target unless DOWNLOAD_ALLOW_PRIVATE=1), connections pinned to the
checked addresses, no redirect to plain http, the job's deadline, the minimum rate, and a
size cap (INPUT_IMAGE_MAX_BYTES) checked against Content-Length and while reading.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cache.bounds import Bounds, Cap
from cache.download import fetch_url
from cache.transfer import DownloadConfig
from schemas.errors import DownloadFailed, ValidationFailed, WorkerError


def fetch_image(url: str, field: str, settings: Any, *, deadline: float | None) -> bytes:
    """The bytes at ``url``; raises ValidationFailed (refused address, too large) or
    DownloadFailed, each message starting with ``field``."""
    cap = Cap(settings.input_image_max_bytes, ValidationFailed,
              f"INPUT_IMAGE_MAX_BYTES={settings.input_image_max_bytes}")
    bounds = Bounds(deadline=deadline, min_rate_bps=settings.download_min_rate_kbps * 1000,
                    rate_window_s=settings.download_rate_window_s, caps=(cap,))
    with tempfile.TemporaryDirectory(prefix="input-image-") as tmp:
        part = Path(tmp) / "image.part"
        try:
            # No auth headers: the operator's HF/Civitai tokens are for models, never for what a job points at.
            fetch_url(url, part, what=field, allow_private=settings.download_allow_private,
                      want_safetensors=False, cfg=DownloadConfig.from_env(), bounds=bounds)
        except ValidationFailed as exc:
            raise ValidationFailed(_with_field(field, exc.message)) from None
        except WorkerError as exc:  # a 404 is the cache's model_not_found: here it is a failed fetch
            raise DownloadFailed(_with_field(field, exc.message)) from None
        return part.read_bytes()


def _with_field(field: str, message: str) -> str:
    return message if message.startswith(field) else f"{field}: {message}"
