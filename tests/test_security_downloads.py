"""Downloads a job cannot turn against the operator: a job's URL may come from anyone (an
app relays its users' LoRA URLs) while the worker holds HF_TOKEN and CIVITAI_TOKEN.

1. tokens go only to the exact trusted host or its subdomains, over https on port 443;
2. redirects never go from https to plain http, credentials stay with their origin
   (scheme, host, port), and a redirect chain is bounded;
3. the connection goes to the address the private-address check saw (no DNS rebinding);
4. every download and lease wait ends by the job's deadline (JOB_TIMEOUT, PREFETCH_TIMEOUT),
   a trickling transfer is given up, and a body over a size cap is refused before writing.

Everything runs over real HTTP(S) on 127.0.0.1 (tests/support/servers.py). Where a test needs
a host name other than 127.0.0.1, ``dns`` stands in for the DNS server: it answers
``socket.getaddrinfo`` for the names it is given and passes every other lookup through.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest

import handler
from cache.registry import lease
from schemas.errors import DownloadFailed, ValidationFailed, WorkerError
from tests.support.cache import fast_downloads, leftovers, make_cache
from tests.support.model_files import safetensors_bytes
from tests.support.servers import FileServer, ModelServer

TOKENS = {"CIVITAI_TOKEN": "civ-sec-token-0123456789", "HF_TOKEN": "hf_sec_token_0123456789"}
PUBLIC = "93.184.216.34"  # a global address: it passes the private-address check


@pytest.fixture(autouse=True)
def env(monkeypatch, models_dir):
    fast_downloads(monkeypatch, models_dir, attempts=1, MODELS_CATALOG=str(models_dir.parent / "no-catalog.json"))


class StandInDNS:
    """Answers for some names, each a list of answers given in turn (the last one sticks)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.queries: dict[str, int] = defaultdict(int)
        self._real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self._real(host, port, *args, **kwargs)
        self.queries[name] += 1
        queue = self.answers[name]
        addrs = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, int(port or 0))) for a in addrs]


@pytest.fixture
def dns(monkeypatch) -> StandInDNS:
    fake = StandInDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


def ca_dir(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir(exist_ok=True)
    return tmp_path / name


def trust(monkeypatch, tmp_path: Path, *servers: FileServer) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("".join(s.ca_pem.read_text() for s in servers))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))


# --------------------------------------------------------------------------- 1. look-alike hosts
def test_tokens_go_only_to_the_trusted_host_or_its_subdomains(monkeypatch, tmp_path, dns, models_dir):
    """A look-alike host (evilcivitai.com, evilhuggingface.co; the stand-in DNS points them at
    the local server) gets no token; the rule itself, host by host."""
    for var, value in TOKENS.items():
        monkeypatch.setenv(var, value)
    data = safetensors_bytes(seed=31)
    with FileServer(ca_dir(tmp_path, "a"), names=("evilcivitai.com", "evilhuggingface.co")) as srv:
        trust(monkeypatch, tmp_path, srv)
        srv.files["/x.safetensors"] = data
        for host in ("evilcivitai.com", "evilhuggingface.co"):
            dns.answers[host] = [["127.0.0.1"]]
            placed = make_cache().ensure("lora", {"url": f"https://{host}:{srv.port}/x.safetensors", "name": host})
            assert placed.downloaded
        assert len(srv.seen) == 2
        assert all("Authorization" not in s.headers for s in srv.seen), "a token went to a look-alike host"
    from cache.credentials import token_var_for

    assert token_var_for("https://civitai.com/api/download/models/1") == "CIVITAI_TOKEN"
    assert token_var_for("https://www.civitai.com/x") == "CIVITAI_TOKEN"
    assert token_var_for("https://huggingface.co/o/r/resolve/main/x") == "HF_TOKEN"
    assert token_var_for("https://cdn-lfs.huggingface.co/x") == "HF_TOKEN"
    for url in ("https://evilcivitai.com/x", "https://civitai.com.evil.net/x", "http://civitai.com/x",
                "https://civitai.com:8443/x", "https://evilhuggingface.co/x", "https://huggingface.co.evil/x",
                "http://huggingface.co/x", "https://user@evil.net/?civitai.com"):
        assert token_var_for(url) is None, url


# --------------------------------------------------------------------------- 2. redirects
def test_https_redirect_to_plain_http_is_refused(monkeypatch, tmp_path, models_dir, https_files):
    """The https server redirects to plain http on the same host (a downgrade to clear text)."""
    with ModelServer() as plain:
        clear = plain.add("/x.safetensors", safetensors_bytes(seed=32))
        https_files.redirects["/x.safetensors"] = clear
        with pytest.raises(DownloadFailed, match="plain http") as info:
            make_cache().ensure("lora", {"url": f"{https_files.url}/x.safetensors", "name": "down"})
        assert plain.seen == [], "the clear-text URL was fetched"
    assert info.value.error_type == "download_failed"
    assert leftovers(models_dir) == []


def test_token_dropped_when_a_redirect_changes_the_port(monkeypatch, tmp_path, models_dir):
    """Civitai's API (https on one port) redirects to the same host on another port: a
    different origin, which must not receive the token."""
    monkeypatch.setenv("CIVITAI_TOKEN", TOKENS["CIVITAI_TOKEN"])
    with FileServer(ca_dir(tmp_path, "a")) as api, FileServer(ca_dir(tmp_path, "b")) as other:
        trust(monkeypatch, tmp_path, api, other)
        monkeypatch.setenv("CIVITAI_BASE_URL", api.url)
        other.files["/blob"] = safetensors_bytes(seed=33)
        api.redirects["/api/download/models/7"] = f"{other.url}/blob"
        placed = make_cache().ensure("lora", {"civitai": 7, "name": "moved"})
        assert placed.downloaded
        assert api.seen[0].headers["Authorization"] == f"Bearer {TOKENS['CIVITAI_TOKEN']}"
        assert other.seen and all("Authorization" not in s.headers for s in other.seen), "token sent to another port"


def test_redirect_chain_is_bounded(models_dir, https_files):
    https_files.redirects["/loop"] = f"{https_files.url}/loop"
    with pytest.raises(DownloadFailed, match="more than 5 redirects"):
        make_cache().ensure("lora", {"url": f"{https_files.url}/loop", "name": "loop"})
    assert https_files.hits == {"/loop": 6}
    assert leftovers(models_dir) == []


# --------------------------------------------------------------------------- 3. DNS rebinding
def test_connection_goes_to_the_checked_address(monkeypatch, tmp_path, dns, models_dir):
    """DNS rebinding: the stand-in DNS answers rebind.test with a public address to the first
    lookup and 127.0.0.1 to any later one, where a local service holds a secret. The worker
    must connect to the address it checked, so the local server is never reached and nothing
    of its answer can appear in the error."""
    monkeypatch.delenv("DOWNLOAD_ALLOW_PRIVATE")
    monkeypatch.setenv("JOB_TIMEOUT", "3")  # however the public address answers, the job ends
    with FileServer(ca_dir(tmp_path, "a"), names=("rebind.test",)) as internal:
        trust(monkeypatch, tmp_path, internal)
        internal.files["/x.safetensors"] = (200, "text/plain", b"internal-secret-0123 metadata", None)
        dns.answers["rebind.test"] = [[PUBLIC], ["127.0.0.1"]]
        with pytest.raises(WorkerError) as info:
            make_cache().ensure(
                "lora", {"url": f"https://rebind.test:{internal.port}/x.safetensors", "name": "rebind"})
        assert internal.hits == {}, "the download connected to the rebound (internal) address"
    assert info.value.error_type == "download_failed"
    assert "internal-secret" not in info.value.message
    assert dns.queries["rebind.test"] == 1, "the host name was resolved again after the check"
    assert leftovers(models_dir) == []


# --------------------------------------------------------------------------- 4. bounds
def _lease_is_free(models_dir: Path, key: str) -> bool:
    try:
        with lease(models_dir, key, timeout=0.2, what="the test"):
            return True
    except DownloadFailed:
        return False


def test_trickling_server_is_cut_at_the_job_deadline(monkeypatch, models_dir):
    """A server that sends 2 bytes a second for 8 s (each read is quick, so the read timeout
    never fires) against JOB_TIMEOUT=2: the download ends at the deadline, the part is gone,
    the lease is free and the next download works."""
    monkeypatch.setenv("JOB_TIMEOUT", "2")
    monkeypatch.setenv("DOWNLOAD_MIN_RATE_KBPS", "0")
    with ModelServer() as srv:
        url = srv.add("/slow.safetensors", safetensors_bytes(seed=34), [("trickle", 2, 8)])
        t0 = time.monotonic()
        with pytest.raises(DownloadFailed, match="JOB_TIMEOUT"):
            make_cache().ensure("lora", {"url": url, "name": "slow"})
        assert time.monotonic() - t0 < 3.5
        assert leftovers(models_dir) == []
        assert _lease_is_free(models_dir, "lora--slow.safetensors")
        ok = srv.add("/ok.safetensors", safetensors_bytes(seed=35))
        assert make_cache().ensure("lora", {"url": ok, "name": "ok"}).downloaded


def test_transfer_below_the_minimum_rate_is_given_up(monkeypatch, models_dir):
    """20 bytes a second against DOWNLOAD_MIN_RATE_KBPS=50 over a 1 s window."""
    monkeypatch.setenv("DOWNLOAD_MIN_RATE_KBPS", "50")
    monkeypatch.setenv("DOWNLOAD_RATE_WINDOW_S", "1")
    with ModelServer() as srv:
        url = srv.add("/slow.safetensors", safetensors_bytes(seed=36), [("trickle", 20, 8)])
        t0 = time.monotonic()
        with pytest.raises(DownloadFailed, match="DOWNLOAD_MIN_RATE_KBPS"):
            make_cache().ensure("lora", {"url": url, "name": "slow"})
        assert time.monotonic() - t0 < 3
    assert leftovers(models_dir) == []


def test_prefetch_ends_by_its_own_deadline(monkeypatch, models_dir, fresh_worker_state):
    """A prefetch job through the handler, PREFETCH_TIMEOUT=1.5, against a trickling Civitai
    (job URLs must be https; the Civitai base URL is the operator's, plain http here)."""
    monkeypatch.setenv("PREFETCH_TIMEOUT", "1.5")
    monkeypatch.setenv("DOWNLOAD_MIN_RATE_KBPS", "0")
    with ModelServer() as srv:
        monkeypatch.setenv("CIVITAI_BASE_URL", srv.url)
        srv.add("/api/download/models/9", safetensors_bytes(seed=37), [("trickle", 2, 8)])
        t0 = time.monotonic()
        out = handler.run_job({"id": "pf", "input": {"action": "prefetch", "loras": [{"civitai": 9, "name": "s"}]}})
        assert time.monotonic() - t0 < 3.5
    assert out["error_type"] == "download_failed" and "PREFETCH_TIMEOUT" in out["error"], out
    assert leftovers(models_dir) == []


def test_lease_wait_ends_by_the_job_deadline(monkeypatch, models_dir):
    """Another worker holds the file's lease; DOWNLOAD_LOCK_TIMEOUT_S is an hour, JOB_TIMEOUT 1 s."""
    monkeypatch.setenv("JOB_TIMEOUT", "1")
    with ModelServer() as srv:
        url = srv.add("/held.safetensors", safetensors_bytes(seed=38))
        with lease(models_dir, "lora--held.safetensors", timeout=1, what="the other worker"):
            t0 = time.monotonic()
            with pytest.raises(DownloadFailed, match="waiting for another worker"):
                make_cache().ensure("lora", {"url": url, "name": "held"})
            assert time.monotonic() - t0 < 2.5
        assert srv.seen == []


def test_announced_size_over_cache_max_gb_is_refused_before_writing(monkeypatch, models_dir):
    """The server announces a 1 TB body (and then sends data for as long as it is read)."""
    monkeypatch.setenv("CACHE_MAX_GB", "0.05")
    with ModelServer() as srv:
        url = srv.add("/huge.safetensors", safetensors_bytes(seed=39), [("announce", 10**12)])
        with pytest.raises(ValidationFailed, match="CACHE_MAX_GB=0.05") as info:
            make_cache().ensure("lora", {"url": url, "name": "huge"})
    assert "1000000000000 bytes" in info.value.message
    assert leftovers(models_dir) == []


def test_body_over_the_catalog_size_is_refused(models_dir):
    """The catalog says 1000 bytes; the server sends a larger file."""
    with ModelServer() as srv:
        url = srv.add("/c.safetensors", safetensors_bytes(size=50_000, seed=40))
        cat = {"models": [{"id": "small", "kind": "lora", "file": "small.safetensors", "bytes": 1000,
                           "source": {"url": url}}]}
        with pytest.raises(DownloadFailed, match="catalog's size"):
            make_cache(cat).ensure("lora", "small")
    assert leftovers(models_dir) == []


def test_size_cap_is_enforced_while_writing():
    """A body without a Content-Length is counted as it arrives (pure check of the meter)."""
    from cache.bounds import Bounds, Cap

    meter = dataclasses.replace(Bounds(), caps=(Cap(100, DownloadFailed, "the test cap"),)).meter("m", 0)
    meter.feed(100)
    with pytest.raises(DownloadFailed, match="has sent 101 bytes, more than the test cap"):
        meter.feed(101)
