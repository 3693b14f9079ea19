"""Connections that go only to addresses the safety check has seen.

``check_url`` resolves a host once and checks every address; if ``requests`` resolved the
name again to connect, a DNS server could answer a public address to the check and
127.0.0.1 (or a metadata service) to the connection. ``PinnedAdapter`` connects to the
checked addresses instead, while the Host header, TLS SNI and certificate verification
still use the host name, so https stays as strict as before.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from schemas.errors import DownloadFailed

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in: what credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, 0)


def ca_bundle() -> str | bool:
    """The CA bundle requests would use (REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE), else the default."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class _Pinned:
    """Mixed into urllib3's connections: connect to ``pinned`` in order, never to a new lookup."""

    def __init__(self, *args: Any, pinned: tuple[str, ...] = (), **kwargs: Any) -> None:
        self._pinned = pinned
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> Any:
        last: Exception | None = None
        for addr in self._pinned:
            # urllib3 connects to _dns_host and keeps .host (the name) for Host, SNI and the
            # certificate check.
            self._dns_host = addr
            try:
                return super()._new_conn()  # type: ignore[misc]
            except (NewConnectionError, ConnectTimeoutError) as exc:
                last = exc
        if last is None:
            raise NewConnectionError(self, "no checked address to connect to")  # type: ignore[arg-type]
        raise last


class _PinnedHTTP(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, HTTPSConnection):
    pass


class _PinnedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTP


class _PinnedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPS


class PinnedAdapter(HTTPAdapter):
    """A transport adapter that connects each origin only to the addresses ``pin`` gave it."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self._pins: dict[tuple[str, str, int], tuple[str, ...]] = {}
        self._pools: dict[tuple[Any, ...], HTTPConnectionPool] = {}

    def pin(self, url: str, addrs: list[str]) -> None:
        self._pins[origin(url)] = tuple(addrs)

    def get_connection_with_tls_context(self, request: PreparedRequest, verify: bool | str | None,
                                        proxies: Any = None, cert: Any = None) -> HTTPConnectionPool:
        scheme, host, port = key = origin(request.url or "")
        addrs = self._pins.get(key)
        if not addrs:  # a programming error, but never worth an unchecked connection
            raise DownloadFailed(f"refused to connect to {host}:{port}: its address was not checked")
        pool_key = (key, addrs, verify)
        pool = self._pools.get(pool_key)
        if pool is None:
            if scheme == "https":
                tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
                if isinstance(verify, str):
                    tls["ca_cert_dir" if os.path.isdir(verify) else "ca_certs"] = verify
                elif verify is False:
                    tls["cert_reqs"] = "CERT_NONE"
                pool = _PinnedHTTPSPool(host, port, pinned=addrs, **tls)
            else:
                pool = _PinnedHTTPPool(host, port, pinned=addrs)
            self._pools[pool_key] = pool
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        super().close()
