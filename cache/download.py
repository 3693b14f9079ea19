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
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3

from cache.bounds import Bounds
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


def _open(adapter: PinnedAdapter, url: str, headers: dict[str, str], job: _Job) -> tuple[requests.Response, str]:
    """GET following redirects by hand: every hop passes the address check, none goes from
    https to plain http, and credentials stay with the origin (scheme, host and port) they
    were given for (e.g. not to Civitai's storage CDN, nor to another port of the same host)."""
    first = origin(url)
    h = dict(headers)
    for _ in range(job.cfg.max_redirects + 1):
        if origin(url) != first:
            h.pop("Authorization", None)
        resp = _hop(adapter, url, h, job)
        if not (resp.is_redirect and resp.headers.get("location")):
            return resp, url
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


def _resume_point(part: Path, chunk: int) -> tuple[hashlib._Hash, int]:
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
                 progress: _Progress) -> tuple[hashlib._Hash, int]:
    """Append the body to the part (or rewrite it, by ``mode``); the hash and size after it."""
    pipe = PipelinedHash(hasher)
    meter = job.bounds.meter(job.what, have)
    try:
        with open(job.part, mode) as f:
            # read1 returns what has arrived instead of waiting for a whole chunk, so the
            # deadline and the rate are checked even while a server trickles.
            while chunk := resp.raw.read1(job.cfg.chunk_bytes, decode_content=True):
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
    """One GET, resuming the part when the server agrees; the whole file's (sha256, size)."""
    hasher, have = _resume_point(job.part, job.cfg.chunk_bytes)
    headers = dict(job.headers)
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp, final = _open(adapter, job.url, headers, job)
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
        hasher, have = _stream_body(resp, job, mode, hasher, have, progress)
        if expected_total is not None and have != expected_total:
            raise Transient(f"the body ended after {have} of {expected_total} bytes")
    return hasher.hexdigest(), have


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
