"""Checks that keep downloads and file names from reaching outside the model volume.

Pure checks raise ``ValidationFailed`` (the caller named something we refuse); nothing here
touches the network except the DNS lookup of ``resolve`` (through ``check_url``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from schemas.errors import DownloadFailed, ValidationFailed
from schemas.redact import redact, redact_url  # noqa: F401 - the one pass; the cache imports both from here

SAFE_EXTS = (".safetensors",)
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")
MODEL_EXTS = SAFE_EXTS + PICKLE_EXTS
MAX_NAME_BYTES = 200
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")


def safe_name(name: str, what: str = "model name") -> str:
    """A plain file name or stem: no separators, no '..', no leading dot, no control chars."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith(".") \
            or ".." in name or name != name.strip():
        shown = repr(name[:60]) + "..." if isinstance(name, str) and len(name) > 60 else repr(name)
        raise ValidationFailed(f"{what} {shown} is not a plain file name: path separators, '..', a leading "
                               "dot and control characters are not allowed")
    # A file name is at most 255 bytes on disk; the hidden part file adds about 30 (accents and
    # emoji take 2-4 bytes a character, so 200 characters can be too long).
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValidationFailed(f"{what} {name[:40]!r}... is too long: at most {MAX_NAME_BYTES} bytes in UTF-8")
    return name


def inside(root: Path, path: Path) -> Path:
    """``path`` with symlinks resolved, refused unless it stays under ``root``."""
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise ValidationFailed(f"{path.name!r} resolves to a location outside MODELS_DIR (a symlink or path "
                               "escape); refused")
    return real


def is_pickle(file: str) -> bool:
    return file.lower().endswith(PICKLE_EXTS)


def check_format(file: str, *, allow_pickle: bool, pinned_sha256: str | None) -> None:
    """Refuse pickled formats unless allowed globally or pinned by the catalog's sha256."""
    low = file.lower()
    if low.endswith(SAFE_EXTS):
        return
    if low.endswith(PICKLE_EXTS):
        if allow_pickle or pinned_sha256:
            return
        raise ValidationFailed(f"{file!r} is a pickled format ({os.path.splitext(file)[1]}), which can run code "
                               "when loaded; use a .safetensors file, or set ALLOW_PICKLE_MODELS=1 (or pin its "
                               "sha256 in models.json) if you trust it")
    raise ValidationFailed(f"{file!r} has an unsupported extension; allowed: {', '.join(MODEL_EXTS)}")


def _blocked_address(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # not is_global also covers what is_private misses, e.g. 100.64.0.0/10 (carrier-grade NAT).
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified or not ip.is_global)


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, in the resolver's order, each once. The one lookup a download
    makes: the connection goes to these addresses (cache/pinned.py), so a name that answers
    a public address to the check and a private one to the connection gets nowhere."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, *, allow_private: bool) -> list[str]:
    """The addresses ``url``'s host may be reached at: https only, and no loopback/private/
    link-local targets, unless DOWNLOAD_ALLOW_PRIVATE=1 (a job must not make the worker fetch
    from its own network, e.g. a metadata service, nor fetch in clear text)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"download URL {redact_url(url)!r} is not an http(s) URL")
    if parts.scheme != "https" and not allow_private:
        raise ValidationFailed(f"download URL {redact_url(url)!r} is plain http; only https is allowed "
                               "(plain http only with DOWNLOAD_ALLOW_PRIVATE=1, for local test servers)")
    try:
        addrs = resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as exc:  # a network problem, not a bad request
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise DownloadFailed(f"download host {parts.hostname!r} cannot be resolved ({reason}); check the "
                             "worker's network or the URL") from None
    if not allow_private and (not addrs or any(_blocked_address(a) for a in addrs)):
        raise ValidationFailed(f"download host {parts.hostname!r} is a loopback, private or link-local address; "
                               "refused (set DOWNLOAD_ALLOW_PRIVATE=1 to allow it)")
    return addrs

