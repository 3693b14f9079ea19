"""One download over several connections, each fetching byte ranges of the same final URL.

CDNs and file servers commonly cap what one connection gets, so a single stream leaves most
of a worker's link idle while it fetches a 2-7 GB checkpoint. The rest of the file (after
what is already in the part) is cut into pieces taken in order by up to
DOWNLOAD_CONNECTIONS workers; each piece is written in place (``os.pwrite`` at its offset)
and retried and resumed on its own with the shared retry policy.

The sha256 must not cost a second read of a multi-GB file, so the hash follows the
contiguous prefix as pieces complete: a piece's bytes stay in memory until the prefix
reaches it (pieces are taken in order, so that is soon), within a budget of a few pieces
per connection. A piece that finds the budget spent (a connection far behind the others)
is read back from the file instead when the prefix reaches it: it was written moments
before, so that read is served by the page cache, and it never happens while the
connections keep pace.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import requests
import urllib3

from cache.bounds import Bounds
from cache.transfer import DownloadConfig, Transient, disk_full, with_retries

PIECE_MIN = 1 << 20
PIECE_MAX = 16 << 20
PIECES_PER_CONNECTION = 4       # enough that a slow connection holds back only a small piece
HELD_PIECES_PER_CONNECTION = 2  # the hash's memory budget: in flight plus waiting for the prefix


class RangesRefused(Exception):
    """A range request was answered with the whole file: this server gets one stream."""


class _Cancelled(Exception):
    """Another piece failed for good; this one stops without retrying."""


class RangeClient(Protocol):
    def get(self, start: int, end: int) -> requests.Response:
        """A 206 response whose body starts at ``start`` (``end`` exclusive); raises Transient,
        RangesRefused or a WorkerError."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where the pieces go and what they are checked against."""
    part: Path                 # the part file, named in messages
    fd: int                    # the part file, open for reading and writing
    have: int                  # bytes already in the part (hashed by the caller)
    total: int                 # the file's size
    what: str                  # names the model in messages
    source: str                # the URL, redacted


@dataclass
class Piece:
    start: int
    end: int                   # exclusive
    got: int = 0
    complete: bool = False
    # Arrived and not yet hashed; None: not kept (over the budget), read back for the hash.
    chunks: list[bytes] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.end - self.start


def piece_size(start: int, total: int, connections: int) -> int:
    """A few pieces per connection, each 1-16 MiB."""
    return min(max((total - start) // (connections * PIECES_PER_CONNECTION), PIECE_MIN), PIECE_MAX)


def split(start: int, total: int, connections: int) -> list[Piece]:
    """Pieces covering [start, total)."""
    size = piece_size(start, total, connections)
    return [Piece(at, min(at + size, total)) for at in range(start, total, size)]


class PrefixHash:
    """sha256 of the part's contiguous prefix: the piece at the front is hashed as its bytes
    arrive, the ones after it when the front reaches them.

    The hashing is done by the connections' own threads (whichever finds work and the hash
    free), not by a thread of its own: among a dozen busy threads a hash thread got too little
    CPU, fell behind, and left its backlog to be hashed after the last byte arrived."""

    def __init__(self, base: hashlib._Hash, target: Target, budget: int, chunk: int) -> None:
        self._h, self._t, self._budget, self._chunk = base, target, budget, chunk
        self._at = target.have
        self._held = 0
        self._pieces: dict[int, Piece] = {}
        self._lock = threading.Lock()      # the pieces' bookkeeping
        self._hashing = threading.Lock()   # held by the one thread feeding the hash

    def hold(self, piece: Piece) -> None:
        """Register a piece being fetched; its bytes are kept for the hash if the budget allows."""
        with self._lock:
            if self._held + piece.size <= self._budget:
                self._held += piece.size
                piece.chunks = []
            self._pieces[piece.start] = piece

    def add(self, piece: Piece, chunk: bytes) -> None:
        """``chunk`` arrived for ``piece`` (and is in the file)."""
        if piece.chunks is not None:
            with self._lock:
                piece.chunks.append(chunk)
            if piece.start == self._at:
                self.advance()

    def done(self, piece: Piece) -> None:
        with self._lock:
            piece.complete = True
        self.advance()

    def _front(self) -> Piece | None:
        """The piece at the front when it has something to hash (call with the lock held)."""
        piece = self._pieces.get(self._at)
        return piece if piece is not None and (piece.complete or piece.chunks) else None

    def advance(self) -> None:
        """Hash what the front allows, unless another thread is at it."""
        while self._hashing.acquire(blocking=False):
            try:
                while True:
                    with self._lock:
                        if (piece := self._front()) is None:
                            break
                        batch, finished = piece.chunks, piece.complete
                        if batch is not None:
                            piece.chunks = []
                    self._digest(piece, batch)
                    if finished:
                        with self._lock:
                            del self._pieces[piece.start]
                            self._at = piece.end
                            if piece.chunks is not None:
                                self._held -= piece.size
                                piece.chunks = None
            finally:
                self._hashing.release()
            with self._lock:  # work that arrived while this thread was letting go
                if self._front() is None:
                    return

    def _digest(self, piece: Piece, batch: list[bytes] | None) -> None:
        if batch is not None:
            for chunk in batch:
                self._h.update(chunk)
            return
        at = piece.start
        while at < piece.end:  # written moments ago: the page cache answers
            data = os.pread(self._t.fd, min(self._chunk, piece.end - at), at)
            if not data:
                raise OSError(errno.EIO, f"the part file ended at {at} while hashing")
            self._h.update(data)
            at += len(data)

    def finish(self) -> hashlib._Hash:
        """The whole file's hash, once every piece is done."""
        self.advance()
        if self._at != self._t.total:
            raise RuntimeError(f"the hash stopped at byte {self._at} of {self._t.total}")
        return self._h


class _Run:
    """The shared state of one ranged download: the pieces left, the meter, the first failure."""

    def __init__(self, target: Target, pieces: list[Piece], connect: Callable[[], RangeClient],
                 cfg: DownloadConfig, bounds: Bounds, count: Callable[[int], None], base: hashlib._Hash) -> None:
        self.t, self.cfg, self.bounds, self.connect, self.count = target, cfg, bounds, connect, count
        self.left = deque(pieces)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.written = target.have
        # One meter for the whole transfer: the deadline, the minimum rate and the size caps
        # apply to the sum of the connections, not to each.
        self.meter = bounds.meter(target.what, target.have)
        self.hash = PrefixHash(base, target, HELD_PIECES_PER_CONNECTION * cfg.connections * pieces[0].size,
                               cfg.chunk_bytes)

    def take(self) -> Piece | None:
        with self.lock:
            if self.stop.is_set() or not self.left:
                return None
            piece = self.left.popleft()
        self.hash.hold(piece)
        return piece

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None or isinstance(self.error, _Cancelled):
                self.error = exc
        self.stop.set()

    def wrote(self, n: int) -> None:
        with self.lock:
            if self.stop.is_set():
                raise _Cancelled()
            self.written += n
            self.count(n)
            self.meter.feed(self.written)

    def work(self, piece: Piece | None) -> None:
        """One connection's loop: pieces until none is left or something failed for good."""
        conn = _Conn(self.connect)
        try:
            while piece is not None:
                with_retries(functools.partial(self.attempt, piece, conn), self.cfg, what=self.t.what,
                             source=self.t.source, bounds=self.bounds)
                self.hash.done(piece)
                piece = self.take()
        except BaseException as exc:  # noqa: BLE001 - the caller raises the first failure
            self.fail(exc)
        finally:
            conn.close()

    def attempt(self, piece: Piece, conn: _Conn) -> None:
        """Fetch what ``piece`` still lacks."""
        if self.stop.is_set():
            raise _Cancelled()
        resp = conn.open(piece.start + piece.got, piece.end)
        try:
            self._read(resp, piece)
            if resp.raw.length_remaining == 0:
                resp.raw.release_conn()  # body fully read: the connection is kept for the next piece
        finally:
            resp.close()

    def _read(self, resp: requests.Response, piece: Piece) -> None:
        at = piece.start + piece.got
        try:
            while at < piece.end:
                chunk = resp.raw.read1(min(self.cfg.chunk_bytes, piece.end - at), decode_content=True)
                if not chunk:
                    raise Transient(f"the range from byte {piece.start} ended after {piece.got} of "
                                    f"{piece.size} bytes")
                _pwrite_all(self.t.fd, chunk, at)
                at += len(chunk)
                piece.got += len(chunk)
                self.hash.add(piece, chunk)
                self.wrote(len(chunk))
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # stall or cut mid-body
            raise Transient(f"the range from byte {piece.start} broke off after {piece.got} bytes "
                            f"({type(exc).__name__})") from None
        except OSError as exc:  # after RequestException, which is an OSError too
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(exc, self.t.part) from None
            raise


class _Conn:
    """One worker's connection: a range client of its own, made when first needed."""

    def __init__(self, connect: Callable[[], RangeClient]) -> None:
        self._connect = connect
        self._client: RangeClient | None = None

    def open(self, start: int, end: int) -> requests.Response:
        if self._client is None:
            self._client = self._connect()
        return self._client.get(start, end)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _pwrite_all(fd: int, data: bytes, at: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def fetch_ranges(connect: Callable[[], RangeClient], target: Target, base: hashlib._Hash,
                 cfg: DownloadConfig, bounds: Bounds, count: Callable[[int], None]) -> hashlib._Hash:
    """Fill ``target`` from byte ``have`` on (``base`` is the hash state after the bytes before
    it); the whole file's hash state. Raises the first failure that outlived its retries (the
    other connections stop), or RangesRefused."""
    pieces = split(target.have, target.total, cfg.connections)
    run = _Run(target, pieces, connect, cfg, bounds, count, base)
    workers = [threading.Thread(target=run.work, args=(run.take(),), name=f"range-{i}", daemon=True)
               for i in range(min(cfg.connections, len(pieces)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if run.error is not None:
        raise run.error
    return run.hash.finish()
