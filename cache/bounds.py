"""Limits on one download: when it must be done, how slow it may go, how large it may get.

A job's download holds the per-file lease other workers wait on, so a server that trickles
bytes or announces a terabyte must not keep it: every transfer and every wait ends by the
job's deadline (JOB_TIMEOUT, or PREFETCH_TIMEOUT for prefetch), a transfer slower than
DOWNLOAD_MIN_RATE_KBPS over DOWNLOAD_RATE_WINDOW_S is given up, and the body may not pass
the smallest size cap (the catalog's ``bytes``, CACHE_MAX_GB, the volume's free space),
checked against Content-Length before writing and counted while writing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import DownloadFailed, ValidationFailed, WorkerError


@dataclass(frozen=True)
class Cap:
    limit: int                      # bytes
    error: type[WorkerError]        # ValidationFailed where the job asked for too much
    why: str                        # names what set the cap, e.g. "CACHE_MAX_GB=0.05"
    disk: bool = False              # the volume's free space: said as a full disk


def size_caps(folder: Path, *, catalog_bytes: int | None, cache_max_gb: float | None,
              already: int = 0) -> list[Cap]:
    """The caps for a file downloaded into ``folder``; ``already`` bytes of it are on disk."""
    caps = []
    if catalog_bytes:
        caps.append(Cap(catalog_bytes, DownloadFailed, f"the catalog's size for it ({catalog_bytes} bytes)"))
    if cache_max_gb:
        caps.append(Cap(int(cache_max_gb * 1024**3), ValidationFailed, f"CACHE_MAX_GB={cache_max_gb:g}"))
    try:
        st = os.statvfs(folder)
    except OSError:
        return caps
    free = st.f_bavail * st.f_frsize + already
    caps.append(Cap(free, DownloadFailed, f"the free space on the volume ({free} bytes)", disk=True))
    return caps


@dataclass(frozen=True)
class Bounds:
    deadline: float | None = None   # time.monotonic(); None: no deadline
    deadline_name: str = "JOB_TIMEOUT"
    min_rate_bps: float = 0.0       # 0: no minimum
    rate_window_s: float = 30.0
    caps: tuple[Cap, ...] = ()

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def check_time(self, what: str) -> None:
        if self.left() <= 0:
            raise DownloadFailed(f"{what}: the download did not finish within the job's time limit "
                                 f"({self.deadline_name}); nothing was kept, try again or prefetch it")

    def timeout(self, connect_s: float, read_s: float) -> tuple[float, float]:
        """requests' (connect, read) timeouts, neither reaching past the deadline."""
        left = max(self.left(), 0.05)
        return min(connect_s, left), min(read_s, left)

    def check_size(self, total: int, what: str, *, announced: bool) -> None:
        for cap in sorted(self.caps, key=lambda c: c.limit):
            if total > cap.limit:
                said = "announces" if announced else "has sent"
                if cap.disk:
                    raise cap.error(f"{what}: the disk is full for this download: it {said} {total} bytes, more "
                                    f"than {cap.why}; free space on the volume or set CACHE_MAX_GB so old models "
                                    "are evicted; nothing was kept")
                raise cap.error(f"{what}: the download {said} {total} bytes, more than {cap.why} allows; "
                                "nothing was kept")

    def meter(self, what: str, have: int) -> Meter:
        """A meter for a transfer that starts with ``have`` bytes already in the file."""
        return Meter(self, what, have)


@dataclass
class Meter:
    """Counts one transfer's bytes; raises when the deadline, the rate or a cap is passed."""
    bounds: Bounds
    what: str
    _at_start: int
    _since: float = field(default_factory=time.monotonic)

    def feed(self, total: int) -> None:
        """Called after each read with the file's size so far."""
        b = self.bounds
        b.check_time(self.what)
        b.check_size(total, self.what, announced=False)
        elapsed = time.monotonic() - self._since
        if b.min_rate_bps and elapsed >= b.rate_window_s:
            rate = (total - self._at_start) / elapsed
            if rate < b.min_rate_bps:
                raise DownloadFailed(f"{self.what}: the server sent {rate / 1000:.1f} kB/s over the last "
                                     f"{elapsed:.0f} s, below DOWNLOAD_MIN_RATE_KBPS="
                                     f"{b.min_rate_bps / 1000:g}; nothing was kept")
            self._since, self._at_start = time.monotonic(), total
