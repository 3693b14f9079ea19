"""Streamed HTTP downloads through requests (Civitai and plain URLs).

The body goes to a hidden ``.part`` file beside the target and is hashed as it streams.
Connection errors, stalls (read timeout), truncated bodies, 429 and 5xx are retried with
exponential backoff (tenacity), resuming with ``Range`` when the server answers 206.
401/403/404, a JSON/HTML page where a model was expected, a sha256 mismatch and a full
disk fail at once with one clear sentence. A large file from a server that answers ranges
comes over several connections (cache/parallel.py), the ranges fetched from the final URL
with the redirect chain's pinning and token rules. The caller renames the finished part into
place; on any failure the part is removed. URLs in messages are redacted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3

from cache.bounds import Bounds
from cache.parallel import RangesRefused, Target, fetch_ranges, piece_size
from cache.pinned import PinnedAdapter, ca_bundle, origin
from cache.safety import check_url, redact, redact_url
from cache.transfer import (
    DownloadConfig,
    Fetched,
    PipelinedHash,
    Transient,
    auth_hint,
    disk_full,
    hash_file,
    verify_sha256,
    with_retries,
)
from schemas.errors import DownloadFailed, ModelNotFound

USER_AGENT = "runpod-a1111-worker-cache/1"
TEXT_TYPES = ("application/json", "text/html", "text/plain", "application/xml", "text/xml")


@dataclass(frozen=True)
class _Job:
    """What every attempt of one fetch_url call asks for."""
    url: str
    part: Path
    what: str
    headers: dict[str, str]
    token_var: str | None
    allow_private: bool
    want_safetensors: bool
    cfg: DownloadConfig
    bounds: Bounds


@dataclass
class _Progress:
    """What the attempts of one call have learnt so far, reported once the file is complete."""
    url: str                   # the final URL after redirects
    transferred: int = 0
    filename: str | None = None
    ranged: bool = True        # False once a range request was answered with the whole file


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


def _hop(adapter: PinnedAdapter, url: str, headers: dict[str, str], job: _Job) -> requests.Response:
    """One GET of ``url``, connected only to the addresses its check returned."""
    adapter.pin(url, check_url(url, allow_private=job.allow_private))
    prepared = requests.Request("GET", url, headers=headers).prepare()
    return adapter.send(prepared, stream=True, verify=ca_bundle(),
                        timeout=job.bounds.timeout(job.cfg.connect_timeout_s, job.cfg.read_timeout_s))


def _open(adapter: PinnedAdapter, url: str, headers: dict[str, str],
          job: _Job) -> tuple[requests.Response, str, dict[str, str]]:
    """GET following redirects by hand: every hop passes the address check, none goes from
    https to plain http, and credentials stay with the origin (scheme, host and port) they
    were given for (e.g. not to Civitai's storage CDN, nor to another port of the same host).
    Returns the response, the final URL and the headers its request carried."""
    first = origin(url)
    h = dict(headers)
    for _ in range(job.cfg.max_redirects + 1):
        if origin(url) != first:
            h.pop("Authorization", None)
        resp = _hop(adapter, url, h, job)
        if not (resp.is_redirect and resp.headers.get("location")):
            return resp, url, h
        nxt = urljoin(url, resp.headers["location"])
        resp.close()
        if urlsplit(url).scheme == "https" and urlsplit(nxt).scheme != "https":
            raise DownloadFailed(f"{job.what}: {redact_url(url)} redirected to a plain http URL "
                                 f"({redact_url(nxt)}); refused, downloads stay on https")
        url = nxt
    raise DownloadFailed(f"{job.what}: more than {job.cfg.max_redirects} redirects downloading "
                         f"{redact_url(job.url)}; refused")


def _fail_status(resp: requests.Response, url: str, token_var: str | None, what: str) -> None:
    code = resp.status_code
    shown = redact_url(url)
    if code in (401, 403):
        raise DownloadFailed(f"{what}: {shown} answered {code} {resp.reason}: {auth_hint(code, token_var)}",
                             status=code)
    if code == 404:
        raise ModelNotFound(f"{what}: {shown} answered 404 Not Found; check the URL, id or file name", status=code)
    if code == 429 or code >= 500:
        raise Transient(f"{shown} answered {code} {resp.reason}")
    raise DownloadFailed(f"{what}: {shown} answered {code} {resp.reason}", status=code)


def holey_marker(part: Path) -> Path:
    """Beside a part being filled by ranges: while it exists, the part has holes and is no
    prefix to resume from (a worker killed mid-way leaves both)."""
    return part.with_name(part.name + ".ranges")


def _resume_point(part: Path, chunk: int) -> tuple[hashlib._Hash, int]:
    marker = holey_marker(part)
    if marker.exists():
        part.unlink(missing_ok=True)
        marker.unlink()
    if part.exists() and part.stat().st_size:
        return hash_file(part, chunk)
    return hashlib.sha256(), 0


def _refuse_text_page(resp: requests.Response, url: str, what: str) -> None:
    """A JSON or HTML answer is an error page or a login wall, never the model file."""
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in TEXT_TYPES:
        snippet = resp.raw.read(300, decode_content=True).decode("utf-8", "replace")
        raise DownloadFailed(f"{what}: {redact_url(url)} sent a {ctype} page instead of a model file "
                             f"(HTTP {resp.status_code}): {redact(' '.join(snippet.split()))[:200]!r}")


def _stream_body(resp: requests.Response, job: _Job, mode: str, hasher: hashlib._Hash, have: int,
                 progress: _Progress, stop_at: int | None = None,
                 go_on: Callable[[int], bool] | None = None) -> tuple[hashlib._Hash, int]:
    """Append the body to the part (or rewrite it, by ``mode``), to its end or until the part
    holds ``stop_at`` bytes and ``go_on`` (asked then) says no; the hash and size after it."""
    pipe = PipelinedHash(hasher)
    meter = job.bounds.meter(job.what, have)
    try:
        with open(job.part, mode) as f:
            # read1 returns what has arrived instead of waiting for a whole chunk, so the
            # deadline and the rate are checked even while a server trickles.
            while True:
                want = job.cfg.chunk_bytes if stop_at is None else min(job.cfg.chunk_bytes, stop_at - have)
                if want <= 0 and go_on is not None and go_on(have):
                    stop_at, want = None, job.cfg.chunk_bytes  # the same stream on, the hash never paused
                if want <= 0 or not (chunk := resp.raw.read1(want, decode_content=True)):
                    break
                have += len(chunk)
                meter.feed(have)
                f.write(chunk)
                pipe.update(chunk)
                progress.transferred += len(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # stall or cut mid-body
        raise Transient(f"the transfer broke off after {have} bytes ({type(exc).__name__})") from None
    except OSError as exc:  # after RequestException, which is an OSError too
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(exc, job.part) from None
        raise
    finally:
        hasher = pipe.finish()
    return hasher, have


def _attempt(adapter: PinnedAdapter, job: _Job, progress: _Progress) -> tuple[str, int]:
    """One GET, resuming the part when the server agrees; the whole file's (sha256, size).

    Where ranges may be used, even a fresh download asks for ``bytes=0-``: a 206 answer shows
    the server takes ranges (and tells the size) without costing a request of its own."""
    hasher, have = _resume_point(job.part, job.cfg.chunk_bytes)
    headers = dict(job.headers)
    if have or (progress.ranged and job.cfg.connections > 1):
        headers["Range"] = f"bytes={have}-"
    try:
        resp, final, sent = _open(adapter, job.url, headers, job)
    except requests.RequestException as exc:
        raise Transient(f"cannot connect: {type(exc).__name__}") from None
    with resp:
        progress.url = final
        if resp.status_code == 416 and have:
            job.part.unlink(missing_ok=True)  # our part is not a prefix of what the server has now
            raise Transient("the server refused the resume range")
        if resp.status_code not in (200, 206):
            _fail_status(resp, final, job.token_var, job.what)
        mode = "ab"
        if resp.status_code == 200 or not resp.headers.get("content-range", "").startswith(f"bytes {have}-"):
            hasher, have, mode = hashlib.sha256(), 0, "wb"  # no resume: start over
        if job.want_safetensors:
            _refuse_text_page(resp, final, job.what)
        progress.filename = content_disposition_name(resp.headers.get("content-disposition")) or progress.filename
        length = resp.headers.get("content-length")
        expected_total = have + int(length) if length and length.isdigit() else None
        if expected_total is not None:
            job.bounds.check_size(expected_total, job.what, announced=True)
        total = _ranged_total(resp, have, job, progress)
        if total is not None:
            hasher, have = _probe(resp, job, hasher, have, total, progress)
            if have == total:
                return hasher.hexdigest(), have
            resp.close()  # the rest comes over ranges (bytes already on their way here are dropped)
            return _parallel(final, sent, job, hasher, have, total, progress)
        hasher, have = _stream_body(resp, job, mode, hasher, have, progress)
        if expected_total is not None and have != expected_total:
            raise Transient(f"the body ended after {have} of {expected_total} bytes")
    return hasher.hexdigest(), have


def _probe(resp: requests.Response, job: _Job, hasher: hashlib._Hash, have: int, total: int,
           progress: _Progress) -> tuple[hashlib._Hash, int]:
    """Read the first piece's worth of the body as one stream, timing it; when it came at
    DOWNLOAD_PARALLEL_BELOW_MBPS or faster, read the rest too. More connections help where a
    server caps each one; a stream that fast is held back by the link or the disk, where more
    connections only add work (on a fast local link they made the download slower)."""
    t0 = time.monotonic()

    def fast(now: int) -> bool:
        return (now - have) / max(time.monotonic() - t0, 1e-6) >= job.cfg.parallel_below_bps

    first = piece_size(have, total, job.cfg.connections)
    return _stream_body(resp, job, "ab", hasher, have, progress, stop_at=min(have + first, total), go_on=fast)


def _ranged_total(resp: requests.Response, have: int, job: _Job, progress: _Progress) -> int | None:
    """The file's size when the rest of it should come over several connections, else None."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", resp.headers.get("content-range", "").strip())
    if resp.status_code != 206 or not m or int(m.group(1)) != have or not progress.ranged:
        return None
    total = int(m.group(3))
    if job.cfg.connections < 2 or total - have < max(job.cfg.parallel_min_bytes, 1):
        return None
    job.bounds.check_size(total, job.what, announced=True)
    return total


class _RangeClient:
    """Range GETs of the final URL over one connection of its own, pinned to the addresses
    checked for it, carrying the headers (and so the token, or none) of the redirect chain's
    last hop."""

    def __init__(self, url: str, addrs: list[str], headers: dict[str, str], total: int, job: _Job) -> None:
        self.url, self.headers, self.total, self.job = url, headers, total, job
        self.adapter = PinnedAdapter()
        self.adapter.pin(url, addrs)

    def get(self, start: int, end: int) -> requests.Response:
        job = self.job
        prepared = requests.Request("GET", self.url, headers={**self.headers, "Range": f"bytes={start}-{end - 1}"})
        try:
            resp = self.adapter.send(prepared.prepare(), stream=True, verify=ca_bundle(),
                                     timeout=job.bounds.timeout(job.cfg.connect_timeout_s, job.cfg.read_timeout_s))
        except requests.RequestException as exc:
            raise Transient(f"cannot connect: {type(exc).__name__}") from None
        try:
            if resp.status_code == 200:
                raise RangesRefused(f"{redact_url(self.url)} answered a range request with the whole file")
            if resp.status_code != 206:
                _fail_status(resp, self.url, job.token_var, job.what)
            got = resp.headers.get("content-range", "")
            if not (got.startswith(f"bytes {start}-") and got.endswith(f"/{self.total}")):
                raise Transient(f"asked for bytes {start}-{end - 1} of {self.total}, got {got!r}")
        except BaseException:
            resp.close()
            raise
        return resp

    def close(self) -> None:
        self.adapter.close()


def _parallel(final: str, sent: dict[str, str], job: _Job, hasher: hashlib._Hash,
              have: int, total: int, progress: _Progress) -> tuple[str, int]:
    """The rest of the file, from byte ``have``, over several connections to ``final``."""
    addrs = check_url(final, allow_private=job.allow_private)
    headers = {k: v for k, v in sent.items() if k.lower() != "range"}
    marker = holey_marker(job.part)
    marker.touch()
    fd = os.open(job.part, os.O_RDWR | os.O_CREAT, 0o666)

    def count(n: int) -> None:
        progress.transferred += n

    done = False
    try:
        os.ftruncate(fd, total)
        target = Target(job.part, fd, have, total, job.what, redact_url(job.url))
        hasher = fetch_ranges(lambda: _RangeClient(final, addrs, headers, total, job), target, hasher,
                              job.cfg, job.bounds, count)
        done = True
    except RangesRefused as exc:
        progress.ranged = False
        os.ftruncate(fd, have)  # keep only the prefix the next attempt can resume from
        done = True
        raise Transient(f"{exc}; going on with one stream") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(exc, job.part) from None
        raise
    finally:
        os.close(fd)
        if not done:
            job.part.unlink(missing_ok=True)  # holes: nothing to resume from
        marker.unlink(missing_ok=True)
    return hasher.hexdigest(), total


def fetch_url(url: str, part: Path, *, what: str, headers: dict[str, str] | None = None,
              token_var: str | None = None, allow_private: bool = False, expected_sha256: str | None = None,
              want_safetensors: bool = True, cfg: DownloadConfig | None = None,
              bounds: Bounds | None = None) -> Fetched:
    """Download ``url`` into ``part`` (resuming an existing part); raises WorkerError subclasses.

    ``what`` names the model in messages; ``bounds`` limits time, rate and size. The part is
    removed when this raises."""
    cfg = cfg or DownloadConfig.from_env()
    job = _Job(url, part, what, {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})},
               token_var, allow_private, want_safetensors, cfg, bounds or Bounds())
    progress = _Progress(url)
    adapter = PinnedAdapter()
    try:
        digest, size = with_retries(lambda: _attempt(adapter, job, progress), cfg, what=what,
                                    source=redact_url(url), bounds=job.bounds)
        verify_sha256(digest, expected_sha256, what)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        adapter.close()
    return Fetched(part, digest, size, progress.transferred, progress.filename, redact_url(progress.url))
