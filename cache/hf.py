"""Hugging Face downloads through huggingface-hub, so HF_TOKEN, HF_ENDPOINT, revisions, the
user's HF cache and Xet storage behave as Hugging Face users expect.

The file is fetched into a staging folder on the volume (``MODELS_DIR/.downloads/...``, not
scanned by A1111), hashed, and handed back for verification and an atomic rename into place.
A file already in the local HF cache (HF_HOME) is copied from there instead of downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from cache.download import DownloadConfig, Fetched, auth_hint, disk_full
from cache.safety import check_url, redact
from schemas.errors import DownloadFailed, ModelNotFound

log = logging.getLogger(__name__)


class _Transient(Exception):
    pass


def endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def fetch_hf(repo: str, file: str, revision: str | None, staging: Path, *, what: str, allow_private: bool,
             cfg: DownloadConfig | None = None) -> Fetched:
    """Download ``repo``/``file`` at ``revision`` into ``staging``; raises WorkerError subclasses."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # a progress bar per MB floods the worker's log
    cfg = cfg or DownloadConfig.from_env()
    # huggingface-hub already retries the metadata call with backoff and resumes a broken
    # body itself; our loop only covers what escapes that, so it stays short.
    attempts = min(2, cfg.attempts)
    base = endpoint()
    check_url(f"{base}/{repo}/resolve/{revision or 'main'}/{file}", allow_private=allow_private)
    token = os.environ.get("HF_TOKEN") or None
    shown = f"{repo}/{file}" + (f"@{revision}" if revision else "")

    def attempt() -> str:
        try:
            return hf_hub_download(repo_id=repo, filename=file, revision=revision, local_dir=str(staging),
                                   token=token, endpoint=base, etag_timeout=cfg.read_timeout_s)
        except GatedRepoError:
            raise DownloadFailed(f"{what}: Hugging Face repo {repo} is gated: accept its license on the Hub and "
                                 f"{auth_hint(403, 'HF_TOKEN')}", status=403) from None
        except RemoteEntryNotFoundError:
            raise ModelNotFound(f"{what}: Hugging Face repo {repo} has no file {file!r}"
                                + (f" at revision {revision!r}" if revision else ""), status=404) from None
        except RevisionNotFoundError:
            raise ModelNotFound(f"{what}: Hugging Face repo {repo} has no revision {revision!r}", status=404) \
                from None
        except RepositoryNotFoundError as exc:
            code = exc.response.status_code if exc.response is not None else 404
            raise DownloadFailed(f"{what}: Hugging Face repo {repo} was not found or is private (HTTP {code}); "
                                 f"check the name or {auth_hint(code, 'HF_TOKEN')}", status=code) from None
        except HfHubHTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise DownloadFailed(f"{what}: Hugging Face answered {code} for {shown}: "
                                     f"{auth_hint(code, 'HF_TOKEN')}", status=code) from None
            if code == 404:
                raise ModelNotFound(f"{what}: Hugging Face answered 404 for {shown}", status=404) from None
            if code == 429 or code >= 500 or code == 0:
                raise _Transient(f"Hugging Face answered {code} for {shown}") from None
            raise DownloadFailed(f"{what}: Hugging Face answered {code} for {shown}", status=code) from None
        except LocalEntryNotFoundError as exc:  # the Hub could not be reached
            raise _Transient(redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(exc, staging / Path(file).name) from None
            raise _Transient(f"{type(exc).__name__}: {redact(str(exc))[:200]}") from None
        except Exception as exc:  # httpx2 transport errors surface under their own classes
            if type(exc).__module__.startswith(("httpx", "httpcore", "hf_xet")):
                raise _Transient(f"{type(exc).__name__}: {redact(str(exc))[:200]}") from None
            raise

    try:
        path = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=cfg.backoff_s, max=cfg.backoff_max_s),
            retry=retry_if_exception_type(_Transient),
            before_sleep=lambda rs: log.info("download of %s: %s; retrying", what, rs.outcome.exception()),
        )(attempt)
    except RetryError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadFailed(f"{what}: downloading {shown} from {base} failed after {attempts} attempts: "
                             f"{exc.last_attempt.exception()}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    p = Path(path)
    size = p.stat().st_size
    return Fetched(p, sha256_file(p), size, size, Path(file).name, f"{base}/{repo}/resolve/{revision or 'main'}/{file}")
