"""Streamed HTTP downloads through requests (Civitai and plain URLs).

The body goes to a hidden ``.part`` file beside the target and is hashed as it streams.
Connection errors, stalls (read timeout), truncated bodies, 429 and 5xx are retried with
exponential backoff (tenacity), resuming with ``Range`` when the server answers 206.
401/403/404, a JSON/HTML page where a model was expected, a sha256 mismatch and a full
disk fail at once with one clear sentence. The caller renames the finished part into
place; on any failure the part is removed. URLs in messages are redacted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from cache.safety import check_url, redact, redact_url
from schemas.errors import DownloadFailed, ModelNotFound

log = logging.getLogger(__name__)

USER_AGENT = "runpod-a1111-worker-cache/1"
MAX_REDIRECTS = 10
TEXT_TYPES = ("application/json", "text/html", "text/plain", "application/xml", "text/xml")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass(frozen=True)
class DownloadConfig:
    attempts: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    lock_timeout_s: float = 3600.0

    @classmethod
    def from_env(cls) -> DownloadConfig:
        """Tunables (mostly for tests and slow links): DOWNLOAD_ATTEMPTS, DOWNLOAD_BACKOFF_S,
        DOWNLOAD_READ_TIMEOUT_S, DOWNLOAD_LOCK_TIMEOUT_S."""
        return cls(
            attempts=max(1, int(_env_float("DOWNLOAD_ATTEMPTS", cls.attempts))),
            backoff_s=_env_float("DOWNLOAD_BACKOFF_S", cls.backoff_s),
            backoff_max_s=max(_env_float("DOWNLOAD_BACKOFF_S", cls.backoff_s), cls.backoff_max_s),
            read_timeout_s=_env_float("DOWNLOAD_READ_TIMEOUT_S", cls.read_timeout_s),
            lock_timeout_s=_env_float("DOWNLOAD_LOCK_TIMEOUT_S", cls.lock_timeout_s),
        )


@dataclass
class Fetched:
    path: Path                 # the finished .part file
    sha256: str
    bytes: int
    transferred: int           # body bytes received over the network by this call
    filename: str | None       # from Content-Disposition, if any
    url: str                   # final URL, redacted


class _PipelinedHash:
    """sha256 computed in a second thread while the first one reads and writes: hashlib
    releases the GIL on large buffers, so hashing overlaps the network instead of adding to
    it (inline hashing cost ~35% of throughput on a local 1 GB/s link)."""

    def __init__(self, base: hashlib._Hash) -> None:
        self._h = base
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._t = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            self._h.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._q.put(chunk)

    def finish(self) -> hashlib._Hash:
        self._q.put(None)
        self._t.join()
        return self._h


class _Transient(Exception):
    """A failure worth another attempt (network, stall, truncation, 429/5xx)."""


def content_disposition_name(header: str | None) -> str | None:
    if not header:
        return None
    m = re.search(r"filename\*\s*=\s*[^']*'[^']*'([^;]+)", header)
    if m:
        name = unquote(m.group(1).strip().strip('"'))
    else:
        m = re.search(r'filename\s*=\s*"([^"]+)"', header) or re.search(r"filename\s*=\s*([^;]+)", header)
        if not m:
            return None
        name = m.group(1).strip()
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name or None


def auth_hint(status: int, token_var: str | None) -> str:
    if token_var:
        if os.environ.get(token_var):
            return f"check that {token_var} is valid and has access to this model (accept its license if it is gated)"
        return f"set {token_var} to a token with access to this model"
    return "the server wants credentials this worker does not have"


def _open(session: requests.Session, url: str, headers: dict[str, str], *, allow_private: bool,
          cfg: DownloadConfig) -> tuple[requests.Response, str]:
    """GET following redirects by hand, so every hop is checked against private addresses and
    credentials are dropped when the host changes (e.g. Civitai -> its storage CDN)."""
    origin = urlsplit(url).hostname
    h = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allow_private=allow_private)
        resp = session.get(url, headers=h, stream=True, allow_redirects=False,
                           timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
        if resp.is_redirect and resp.headers.get("location"):
            nxt = urljoin(url, resp.headers["location"])
            resp.close()
            if urlsplit(nxt).hostname != origin:
                h.pop("Authorization", None)
            url = nxt
            continue
        return resp, url
    raise DownloadFailed(f"too many redirects downloading {redact_url(url)}")


def _fail_status(resp: requests.Response, url: str, token_var: str | None, what: str) -> None:
    code = resp.status_code
    shown = redact_url(url)
    if code in (401, 403):
        raise DownloadFailed(f"{what}: {shown} answered {code} {resp.reason}: {auth_hint(code, token_var)}",
                             status=code)
    if code == 404:
        raise ModelNotFound(f"{what}: {shown} answered 404 Not Found; check the URL, id or file name", status=code)
    if code == 429 or code >= 500:
        raise _Transient(f"{shown} answered {code} {resp.reason}")
    raise DownloadFailed(f"{what}: {shown} answered {code} {resp.reason}", status=code)


def _hash_existing(path: Path, chunk: int) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
            size += len(data)
    return h, size


def disk_full(exc: OSError, where: Path) -> DownloadFailed:
    return DownloadFailed(f"the disk is full while writing {where.parent.name}/{where.name.lstrip('.')}: "
                          f"{exc.strerror}; free space on the volume or set CACHE_MAX_GB so old models are evicted")


def fetch_url(url: str, part: Path, *, what: str, headers: dict[str, str] | None = None,
              token_var: str | None = None, allow_private: bool = False, expected_sha256: str | None = None,
              want_safetensors: bool = True, cfg: DownloadConfig | None = None,
              session: requests.Session | None = None) -> Fetched:
    """Download ``url`` into ``part`` (resuming an existing part); raises WorkerError subclasses.

    ``what`` names the model in messages. The part is removed when this raises.
    """
    cfg = cfg or DownloadConfig.from_env()
    own_session = session is None
    session = session or requests.Session()
    base_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    state = {"transferred": 0, "filename": None, "url": url}

    def attempt() -> tuple[str, int]:
        offset = part.stat().st_size if part.exists() else 0
        hasher, have = _hash_existing(part, cfg.chunk_bytes) if offset else (hashlib.sha256(), 0)
        h = dict(base_headers)
        if have:
            h["Range"] = f"bytes={have}-"
        try:
            resp, final = _open(session, url, h, allow_private=allow_private, cfg=cfg)
        except requests.RequestException as exc:
            raise _Transient(f"cannot connect: {type(exc).__name__}") from None
        with resp:
            state["url"] = final
            if resp.status_code == 416 and have:
                part.unlink(missing_ok=True)  # our part is not a prefix of what the server has now
                raise _Transient("the server refused the resume range")
            if resp.status_code not in (200, 206):
                _fail_status(resp, final, token_var, what)
            mode = "ab"
            if resp.status_code == 200 or not resp.headers.get("content-range", "").startswith(f"bytes {have}-"):
                hasher, have, mode = hashlib.sha256(), 0, "wb"  # no resume: start over
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if want_safetensors and ctype in TEXT_TYPES:
                snippet = resp.raw.read(300, decode_content=True).decode("utf-8", "replace")
                raise DownloadFailed(f"{what}: {redact_url(final)} sent a {ctype} page instead of a model file "
                                     f"(HTTP {resp.status_code}): {redact(' '.join(snippet.split()))[:200]!r}")
            state["filename"] = content_disposition_name(resp.headers.get("content-disposition")) \
                or state["filename"]
            length = resp.headers.get("content-length")
            expected_total = have + int(length) if length and length.isdigit() else None
            pipe = _PipelinedHash(hasher)
            try:
                with open(part, mode) as f:
                    # raw.read rather than iter_content: same bytes, about half the CPU per byte.
                    while chunk := resp.raw.read(cfg.chunk_bytes, decode_content=True):
                        f.write(chunk)
                        pipe.update(chunk)
                        have += len(chunk)
                        state["transferred"] += len(chunk)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # stall or cut mid-body
                raise _Transient(f"the transfer broke off after {have} bytes ({type(exc).__name__})") from None
            except OSError as exc:  # after RequestException, which is an OSError too
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise disk_full(exc, part) from None
                raise
            finally:
                hasher = pipe.finish()
            if expected_total is not None and have != expected_total:
                raise _Transient(f"the body ended after {have} of {expected_total} bytes")
        return hasher.hexdigest(), have

    try:
        retrying = Retrying(
            stop=stop_after_attempt(cfg.attempts),
            wait=wait_exponential(multiplier=cfg.backoff_s, max=cfg.backoff_max_s),
            retry=retry_if_exception_type(_Transient),
            before_sleep=lambda rs: log.info("download of %s: %s; retrying (attempt %d of %d)", what,
                                             rs.outcome.exception(), rs.attempt_number + 1, cfg.attempts),
            reraise=False,
        )
        digest, size = retrying(attempt)
    except RetryError as exc:
        part.unlink(missing_ok=True)
        last = exc.last_attempt.exception()
        raise DownloadFailed(f"{what}: downloading {redact_url(url)} failed after {cfg.attempts} attempts: "
                             f"{redact(str(last))}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        if own_session:
            session.close()
    if expected_sha256 and digest != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"{what}: the downloaded file's sha256 {digest} does not match the expected "
                             f"{expected_sha256.lower()}; nothing was kept")
    return Fetched(part, digest, size, state["transferred"], state["filename"], redact_url(state["url"]))
