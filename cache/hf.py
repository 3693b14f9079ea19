"""Hugging Face downloads: the Hub's metadata through huggingface-hub, the body through our
own streamed download, hashed as it arrives.

huggingface-hub asks the Hub about the file (HF_TOKEN or the stored login, HF_ENDPOINT,
revisions, and the Hub's gated / missing-file / missing-revision answers). For an LFS file the
Hub reports the file's sha256 (``X-Linked-Etag`` / ``ETag``). huggingface-hub 2.4.0 does not
check that sha256 when it downloads over HTTP: ``http_get`` in ``huggingface_hub/file_download.py``
only compares the byte count, and the only sha256 it computes (``sha_fileobj`` in
``_hf_hub_download_to_local_dir``) is a second read of a file already lying in ``local_dir``.
Hashing after ``hf_hub_download`` would read every model from the volume once more, so the body
goes through ``cache.download.fetch_url`` instead, which hashes while it writes and refuses a
body whose sha256 is not the one the Hub reported: the file is written once and never read
back. The same path gives Hugging Face downloads the deadlines, rate floor, size caps, pinned
addresses and token scoping of every other download. A small non-LFS file (no sha256 from the
Hub) is hashed the same way, as it streams; there is just nothing to compare it with.

A file already in the local HF cache (HF_HOME) is copied from there, hashed during the copy.
The file lands in a staging folder on the volume (``MODELS_DIR/.downloads/...``, not scanned by
A1111) and is handed back for an atomic rename into place.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from cache.bounds import Bounds
from cache.credentials import trusted_for
from cache.download import fetch_url
from cache.safety import check_url, redact
from cache.transfer import (
    DownloadConfig,
    Fetched,
    Transient,
    auth_hint,
    disk_full,
    sha256_file,
    verify_sha256,
    with_retries,
)
from schemas.errors import DownloadFailed, ModelNotFound

__all__ = ["endpoint", "fetch_hf", "sha256_file"]  # sha256_file: re-exported for cache/__init__.py

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")
HF_TOKEN_VAR = "HF_TOKEN"  # noqa: S105 (a variable name, not a secret): the variable named in 401/403 hints and scoped by cache/credentials.py


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


def _metadata(hub: _HubFile, token: str | None, cfg: DownloadConfig, bounds: Bounds) -> Any:
    """The Hub's HfFileMetadata for the file (commit, etag, size, where to GET it)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        return get_hf_file_metadata(hf_hub_url(hub.repo, hub.file, revision=hub.revision, endpoint=hub.base),
                                    token=token, endpoint=hub.base,
                                    timeout=bounds.timeout(cfg.connect_timeout_s, cfg.read_timeout_s)[1])
    except Exception as exc:
        mapped = _refusal(exc, hub) or _broken_transfer(exc, Path("."), hub.file)
        if mapped is None:
            raise
        raise mapped from None


def hub_sha256(etag: str | None) -> str | None:
    """The LFS sha256 the Hub reported, or None for a file kept in git (its etag is a git hash)."""
    tag = (etag or "").strip().strip('"').lower()
    return tag if SHA256.fullmatch(tag) else None


def _copy_hashing(src: Path, dest: Path, chunk: int) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(chunk):
            h.update(block)
            fout.write(block)
            n += len(block)
    return h.hexdigest(), n


def _from_hf_cache(hub: _HubFile, commit: str | None, dest: Path, sha: str | None,
                   cfg: DownloadConfig) -> tuple[str, int] | None:
    """The file copied from the local HF cache when it holds this commit's file, else None."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub.repo, hub.file, revision=commit) if commit else None
    if not isinstance(cached, str):
        return None
    try:
        digest, size = _copy_hashing(Path(cached), dest, cfg.chunk_bytes)
    except OSError as exc:
        mapped = _broken_transfer(exc, dest.parent, hub.file)
        raise (mapped if isinstance(mapped, DownloadFailed) else exc) from None
    if sha and digest != sha:  # a damaged cache entry: download instead
        log.warning("%s: the HF cache copy of %s has sha256 %s, not the Hub's %s; downloading it",
                    hub.what, hub.shown, digest, sha)
        dest.unlink(missing_ok=True)
        return None
    return digest, size


def _download(hub: _HubFile, meta: Any, dest: Path, token: str | None, *, allow_private: bool,
              cfg: DownloadConfig, bounds: Bounds) -> Fetched:
    location = urljoin(hub.url, meta.location or hub.url)
    headers = {"Authorization": f"Bearer {token}"} if token and trusted_for(location, HF_TOKEN_VAR) else {}
    # expected_sha256: a body that is not the file the Hub described is refused, checked on
    # the hash computed while writing.
    return fetch_url(location, dest, what=hub.what, headers=headers, token_var=HF_TOKEN_VAR,
                     allow_private=allow_private, expected_sha256=hub_sha256(meta.etag),
                     want_safetensors=dest.name.lower().endswith(".safetensors"), cfg=cfg, bounds=bounds)


def fetch_hf(repo: str, file: str, revision: str | None, staging: Path, *, what: str, allow_private: bool,
             cfg: DownloadConfig | None = None, bounds: Bounds | None = None,
             expected_sha256: str | None = None) -> Fetched:
    """Download ``repo``/``file`` at ``revision`` into ``staging``; raises WorkerError subclasses.

    ``expected_sha256`` (a catalog pin) is compared with the sha256 the Hub reports before any
    byte is fetched. ``staging`` is removed when this raises."""
    from huggingface_hub import get_token

    cfg = cfg or DownloadConfig.from_env()
    bounds = bounds or Bounds()
    hub = _HubFile(repo, file, revision, what, endpoint())
    check_url(hub.url, allow_private=allow_private)
    token = get_token()  # HF_TOKEN, else the login stored under HF_HOME, as huggingface-hub does
    dest = staging / Path(file).name
    try:
        meta = with_retries(lambda: _metadata(hub, token, cfg, bounds), cfg, what=what,
                            source=f"{hub.shown} from {hub.base}", bounds=bounds)
        sha = hub_sha256(meta.etag)
        if sha and expected_sha256:
            verify_sha256(sha, expected_sha256, what)
        if meta.size is not None:
            bounds.check_size(meta.size, what, announced=True)
        staging.mkdir(parents=True, exist_ok=True)
        copied = _from_hf_cache(hub, meta.commit_hash, dest, sha, cfg)
        if copied is not None:
            return Fetched(dest, copied[0], copied[1], 0, dest.name, hub.url)
        got = _download(hub, meta, dest, token, allow_private=allow_private, cfg=cfg, bounds=bounds)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Fetched(dest, got.sha256, got.bytes, got.transferred, dest.name, hub.url)
