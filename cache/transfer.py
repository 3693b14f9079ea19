"""What the URL and the Hugging Face downloads share: their tunables and result, which
failures earn another attempt and how the attempts are spaced, the sha256 of what arrived,
and the sentences for failures both paths can meet (credentials, a full disk, a wrong hash).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from cache.bounds import Bounds
from cache.safety import redact
from schemas.errors import DownloadFailed

log = logging.getLogger(__name__)

T = TypeVar("T")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


MAX_CONNECTIONS = 32


def _connections_env() -> int:
    raw = os.environ.get("DOWNLOAD_CONNECTIONS", "").strip()
    if not raw:
        return DownloadConfig.connections
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONNECTIONS:
        raise ValueError(f"DOWNLOAD_CONNECTIONS must be a whole number from 1 to {MAX_CONNECTIONS}, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class DownloadConfig:
    attempts: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    lock_timeout_s: float = 3600.0
    max_redirects: int = 5
    # Ranged downloads (cache/parallel.py): a file of at least parallel_min_bytes from a
    # server that answers ranges comes over this many connections (1: always one stream),
    # unless its first piece (1-16 MiB) came over one stream at parallel_below_bps or faster.
    connections: int = 8
    parallel_min_bytes: int = 64 << 20
    parallel_below_bps: float = 200e6

    @classmethod
    def from_env(cls) -> DownloadConfig:
        """Tunables (mostly for tests and slow links): DOWNLOAD_ATTEMPTS, DOWNLOAD_BACKOFF_S,
        DOWNLOAD_READ_TIMEOUT_S, DOWNLOAD_LOCK_TIMEOUT_S, DOWNLOAD_CONNECTIONS (1-32, default
        8), DOWNLOAD_PARALLEL_MIN_MB (MiB, default 64) and DOWNLOAD_PARALLEL_BELOW_MBPS (MB/s,
        default 200; 0: never more than one stream)."""
        return cls(
            connections=_connections_env(),
            parallel_min_bytes=int(max(_env_float("DOWNLOAD_PARALLEL_MIN_MB", cls.parallel_min_bytes / 2**20), 0)
                                   * 2**20),
            parallel_below_bps=max(_env_float("DOWNLOAD_PARALLEL_BELOW_MBPS", cls.parallel_below_bps / 1e6), 0) * 1e6,
            attempts=max(1, int(_env_float("DOWNLOAD_ATTEMPTS", cls.attempts))),
            backoff_s=_env_float("DOWNLOAD_BACKOFF_S", cls.backoff_s),
            backoff_max_s=max(_env_float("DOWNLOAD_BACKOFF_S", cls.backoff_s), cls.backoff_max_s),
            read_timeout_s=_env_float("DOWNLOAD_READ_TIMEOUT_S", cls.read_timeout_s),
            lock_timeout_s=_env_float("DOWNLOAD_LOCK_TIMEOUT_S", cls.lock_timeout_s),
        )


@dataclass
class Fetched:
    path: Path                 # the finished file, not yet in its final place
    sha256: str
    bytes: int
    transferred: int           # body bytes received over the network by this call
    filename: str | None       # the name the server gave the file, if any
    url: str                   # final URL, redacted


# ------------------------------------------------------------------------------ retries
class Transient(Exception):
    """A failure worth another attempt (network, stall, truncation, 429/5xx)."""


def retrying(cfg: DownloadConfig, what: str, attempts: int, bounds: Bounds | None = None) -> Retrying:
    """Up to ``attempts`` tries with exponential backoff; only Transient failures are retried,
    and no pause between them reaches past the deadline."""
    backoff = wait_exponential(multiplier=cfg.backoff_s, max=cfg.backoff_max_s)
    left = (bounds or Bounds()).left
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=lambda rs: max(0.0, min(backoff(rs), left())),
        retry=retry_if_exception_type(Transient),
        before_sleep=lambda rs: log.info("download of %s: %s; retrying (attempt %d of %d)", what,
                                         rs.outcome.exception(), rs.attempt_number + 1, attempts),
    )


def with_retries(attempt: Callable[[], T], cfg: DownloadConfig, *, what: str, source: str,
                 attempts: int | None = None, bounds: Bounds | None = None) -> T:
    """``attempt()`` until it succeeds or fails for good. When the attempts run out, the last
    transient failure becomes one DownloadFailed naming ``source`` (already redacted); once
    the deadline of ``bounds`` has passed, no attempt starts (DownloadFailed saying so)."""
    n = attempts or cfg.attempts
    limits = bounds or Bounds()

    def bounded() -> T:
        limits.check_time(what)
        return attempt()

    try:
        return retrying(cfg, what, n, limits)(bounded)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise DownloadFailed(f"{what}: downloading {source} failed after {n} attempts: {redact(str(last))}") \
            from None


# ------------------------------------------------------------------------------ hashing
class PipelinedHash:
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


def hash_file(path: Path, chunk: int = 1 << 20) -> tuple[hashlib._Hash, int]:
    """The sha256 state after ``path``'s bytes, and their count: a resumed download goes on
    from this state instead of hashing the whole file again at the end."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
            size += len(data)
    return h, size


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    return hash_file(path, chunk)[0].hexdigest()


def verify_sha256(digest: str, expected: str | None, what: str) -> None:
    """Raise DownloadFailed when a sha256 was expected and ``digest`` is another one."""
    if expected and digest != expected.lower():
        raise DownloadFailed(f"{what}: the downloaded file's sha256 {digest} does not match the expected "
                             f"{expected.lower()}; nothing was kept")


# ------------------------------------------------------------------------------ messages
def auth_hint(status: int, token_var: str | None) -> str:
    if token_var:
        if os.environ.get(token_var):
            return f"check that {token_var} is valid and has access to this model (accept its license if it is gated)"
        return f"set {token_var} to a token with access to this model"
    return "the server wants credentials this worker does not have"


def disk_full(exc: OSError, where: Path) -> DownloadFailed:
    return DownloadFailed(f"the disk is full while writing {where.parent.name}/{where.name.lstrip('.')}: "
                          f"{exc.strerror}; free space on the volume or set CACHE_MAX_GB so old models are evicted")
