"""Hugging Face downloads through huggingface-hub, so HF_TOKEN, HF_ENDPOINT, revisions, the
user's HF cache and Xet storage behave as Hugging Face users expect.

The file is fetched into a staging folder on the volume (``MODELS_DIR/.downloads/...``, not
scanned by A1111), hashed, and handed back for verification and an atomic rename into place.
A file already in the local HF cache (HF_HOME) is copied from there instead of downloaded.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cache.bounds import Bounds
from cache.safety import check_url, redact
from cache.transfer import DownloadConfig, Fetched, Transient, auth_hint, disk_full, sha256_file, with_retries
from schemas.errors import DownloadFailed, ModelNotFound

# huggingface-hub already retries the metadata call with backoff and resumes a broken body
# itself; our loop only covers what escapes that, so it stays short.
MAX_ATTEMPTS = 2


def endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class _HubFile:
    repo: str
    file: str
    revision: str | None
    what: str          # names the model in messages
    base: str          # the Hub's endpoint

    @property
    def shown(self) -> str:
        return f"{self.repo}/{self.file}" + (f"@{self.revision}" if self.revision else "")

    @property
    def url(self) -> str:
        return f"{self.base}/{self.repo}/resolve/{self.revision or 'main'}/{self.file}"


def _refusal(exc: Exception, hub: _HubFile) -> Exception | None:
    """The Hub's HTTP answers as one sentence each: final ones as WorkerErrors, the ones worth
    another attempt as Transient; None for anything that is not an HTTP answer."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what, repo = hub.what, hub.repo
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, its base class
        return DownloadFailed(f"{what}: Hugging Face repo {repo} is gated: accept its license on the Hub and "
                              f"{auth_hint(403, 'HF_TOKEN')}", status=403)
    if isinstance(exc, RemoteEntryNotFoundError):
        return ModelNotFound(f"{what}: Hugging Face repo {repo} has no file {hub.file!r}"
                             + (f" at revision {hub.revision!r}" if hub.revision else ""), status=404)
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFound(f"{what}: Hugging Face repo {repo} has no revision {hub.revision!r}", status=404)
    if isinstance(exc, RepositoryNotFoundError):
        code = exc.response.status_code if exc.response is not None else 404
        return DownloadFailed(f"{what}: Hugging Face repo {repo} was not found or is private (HTTP {code}); "
                              f"check the name or {auth_hint(code, 'HF_TOKEN')}", status=code)
    if not isinstance(exc, HfHubHTTPError):
        return None
    code = exc.response.status_code if exc.response is not None else 0
    if code in (401, 403):
        return DownloadFailed(f"{what}: Hugging Face answered {code} for {hub.shown}: {auth_hint(code, 'HF_TOKEN')}",
                              status=code)
    if code == 404:
        return ModelNotFound(f"{what}: Hugging Face answered 404 for {hub.shown}", status=404)
    if code == 429 or code >= 500 or code == 0:
        return Transient(f"Hugging Face answered {code} for {hub.shown}")
    return DownloadFailed(f"{what}: Hugging Face answered {code} for {hub.shown}", status=code)


def _broken_transfer(exc: Exception, staging: Path, file: str) -> Exception | None:
    """Failures on the way (no connection, a full disk, transport errors); None for the rest."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):  # the Hub could not be reached
        return Transient(redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return disk_full(exc, staging / Path(file).name)
        return Transient(f"{type(exc).__name__}: {redact(str(exc))[:200]}")
    # httpx transport errors surface under their own classes, outside OSError.
    if type(exc).__module__.startswith(("httpx", "httpcore", "hf_xet")):
        return Transient(f"{type(exc).__name__}: {redact(str(exc))[:200]}")
    return None


def _attempt(hub: _HubFile, staging: Path, token: str | None, cfg: DownloadConfig, bounds: Bounds) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=hub.repo, filename=hub.file, revision=hub.revision,
                                    local_dir=str(staging), token=token, endpoint=hub.base,
                                    etag_timeout=bounds.timeout(cfg.connect_timeout_s, cfg.read_timeout_s)[1]))
    except Exception as exc:
        mapped = _refusal(exc, hub)
        if mapped is None:
            mapped = _broken_transfer(exc, staging, hub.file)
        if mapped is None:
            raise
        raise mapped from None


def fetch_hf(repo: str, file: str, revision: str | None, staging: Path, *, what: str, allow_private: bool,
             cfg: DownloadConfig | None = None, bounds: Bounds | None = None) -> Fetched:
    """Download ``repo``/``file`` at ``revision`` into ``staging``; raises WorkerError subclasses.

    ``staging`` is removed when this raises."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # a progress bar per MB floods the worker's log
    cfg = cfg or DownloadConfig.from_env()
    bounds = bounds or Bounds()
    hub = _HubFile(repo, file, revision, what, endpoint())
    check_url(hub.url, allow_private=allow_private)
    token = os.environ.get("HF_TOKEN") or None
    try:
        path = with_retries(lambda: _attempt(hub, staging, token, cfg, bounds), cfg, what=what,
                            source=f"{hub.shown} from {hub.base}", attempts=min(MAX_ATTEMPTS, cfg.attempts),
                            bounds=bounds)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = path.stat().st_size
    return Fetched(path, sha256_file(path), size, size, Path(file).name, hub.url)

