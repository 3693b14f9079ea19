"""Ranged downloads over several connections, against real local HTTP servers.

DOWNLOAD_PARALLEL_MIN_MB is lowered so files of a few MB take the ranged path, and
DOWNLOAD_PARALLEL_BELOW_MBPS raised so loopback's speed does not keep them on one stream;
pieces are then 1 MiB (cache/parallel.py PIECE_MIN), so an 8 MiB file is 8 pieces: the
first read from the ``bytes=0-`` probe's own response, the other 7 asked for as ``bytes=a-b``.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from cache.download import holey_marker
from cache.refs import parse_ref
from schemas.errors import DownloadFailed, ValidationFailed
from tests.support.cache import fast_downloads, leftovers, make_cache, registry
from tests.support.model_files import safetensors_bytes
from tests.support.servers import ModelServer

MIB = 1 << 20
PATH = "/big.safetensors"


@pytest.fixture(autouse=True)
def env(monkeypatch, models_dir):
    fast_downloads(monkeypatch, models_dir, read_timeout_s=2, DOWNLOAD_CONNECTIONS="4",
                   DOWNLOAD_PARALLEL_MIN_MB="1", DOWNLOAD_PARALLEL_BELOW_MBPS="1000000")


def model(mib: int = 8, seed: int = 50) -> bytes:
    return safetensors_bytes(size=mib * MIB - 200, seed=seed)  # just under mib MiB with its header


def bounded(srv: ModelServer, path: str = PATH) -> list[tuple[int, int]]:
    """The bounded ranges asked for (the pieces after the first), sorted."""
    return sorted((a, b) for a, b in srv.ranges(path) if b is not None)


def assert_covers(ranges: list[tuple[int, int]], start: int, total: int) -> None:
    """``ranges`` are the pieces of [start, total), each once, back to back."""
    at = start
    for a, b in ranges:
        assert a == at, ranges
        at = b + 1
    assert at == total


def test_large_file_comes_over_several_connections_exact(models_dir):
    data = model()
    sha = hashlib.sha256(data).hexdigest()
    with ModelServer() as srv:
        url = srv.add(PATH, data, chunk_delay=0.02)  # slow enough that the connections overlap
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "big", "sha256": sha})
        assert srv.ranges(PATH)[0] == (0, None)  # the probe, which also brings the first piece
        pieces = bounded(srv)
        assert len(pieces) == 7 and len(srv.gets(PATH)) == 8
        assert_covers(pieces, MIB, len(data))
        assert srv.peak[PATH] >= 3
    assert placed.downloaded and placed.sha256 == sha and placed.bytes == len(data)
    assert (models_dir / "checkpoints/big.safetensors").read_bytes() == data
    assert registry(models_dir)["checkpoints/big.safetensors"]["sha256"] == sha
    assert leftovers(models_dir) == ["checkpoints/big.safetensors"]


def test_a_range_cut_midway_is_resumed_on_its_own(models_dir):
    """The server drops the connection of one range (the third GET) halfway through it."""
    data = model(seed=51)
    with ModelServer() as srv:
        url = srv.add(PATH, data, ["ok", "ok", "truncate", "ok"], chunk_delay=0.01)
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "cut"})
        ranges = bounded(srv)
    # Eight pieces plus one resume: a range starting inside a piece, up to that piece's end.
    resumed = [(a, b) for a, b in ranges if a % MIB]
    assert len(ranges) == 8 and len(resumed) == 1
    a, b = resumed[0]
    assert (b + 1) % MIB == 0 or b + 1 == len(data)
    assert_covers([r for r in ranges if r != resumed[0]], MIB, len(data))  # no other piece asked twice
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / "checkpoints/cut.safetensors").read_bytes() == data


def test_server_without_ranges_gets_one_stream(models_dir):
    data = model(seed=52)
    with ModelServer() as srv:
        url = srv.add(PATH, data, ranges=False)
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "plain"})
        assert len(srv.gets(PATH)) == 1 and srv.sent[PATH] == len(data)
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / "checkpoints/plain.safetensors").read_bytes() == data


def test_range_answered_with_the_whole_file_falls_back_to_one_stream(models_dir):
    """The probe gets a 206, every later request the whole file with 200 (ranges switched off)."""
    data = model(seed=53)
    with ModelServer() as srv:
        url = srv.add(PATH, data, ["ok", "whole"])
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "fallback"})
        last = srv.ranges(PATH)[-1]
    # The last attempt was one stream: it resumed after the first piece (the part's valid
    # prefix), the server sent the whole file, and the part was rewritten.
    assert last == (MIB, None) and len(srv.gets(PATH)) >= 3
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / "checkpoints/fallback.safetensors").read_bytes() == data


def test_small_file_is_one_stream(models_dir, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_PARALLEL_MIN_MB", "64")
    data = model(seed=54)
    with ModelServer() as srv:
        url = srv.add(PATH, data)
        make_cache().ensure("checkpoint", {"url": url, "name": "small"})
        assert srv.ranges(PATH) == [(0, None)] and srv.sent[PATH] == len(data)
    assert (models_dir / "checkpoints/small.safetensors").read_bytes() == data


def test_fast_first_piece_keeps_one_stream(models_dir, monkeypatch):
    """The first MiB comes faster than DOWNLOAD_PARALLEL_BELOW_MBPS=5 (loopback, no delay):
    the rest follows on the same stream, no range is asked for."""
    monkeypatch.setenv("DOWNLOAD_PARALLEL_BELOW_MBPS", "5")
    data = model(seed=61)
    with ModelServer() as srv:
        url = srv.add(PATH, data)
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "fast"})
        assert srv.ranges(PATH) == [(0, None)] and srv.sent[PATH] == len(data)
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / "checkpoints/fast.safetensors").read_bytes() == data


def test_sha256_mismatch_of_a_ranged_download_keeps_nothing(models_dir):
    with ModelServer() as srv:
        url = srv.add(PATH, model(seed=55))
        with pytest.raises(DownloadFailed, match="does not match the expected"):
            make_cache().ensure("checkpoint", {"url": url, "name": "mismatch", "sha256": "0" * 64})
        assert len(bounded(srv)) == 7
    assert leftovers(models_dir) == [] and registry(models_dir) == {}


def test_deadline_ends_every_connection(models_dir, monkeypatch):
    """Each range trickles (0.3 s per 256 KiB): the whole file would take ~5 s; JOB_TIMEOUT=1."""
    monkeypatch.setenv("JOB_TIMEOUT", "1")
    monkeypatch.setenv("DOWNLOAD_MIN_RATE_KBPS", "0")
    with ModelServer() as srv:
        url = srv.add(PATH, model(seed=56), chunk_delay=0.3)
        t0 = time.monotonic()
        with pytest.raises(DownloadFailed, match="JOB_TIMEOUT"):
            make_cache().ensure("checkpoint", {"url": url, "name": "late"})
        assert time.monotonic() - t0 < 2.5
        assert len(bounded(srv)) >= 3  # it was the ranged path that the deadline stopped
    assert leftovers(models_dir) == []


def test_minimum_rate_counts_all_connections(models_dir, monkeypatch):
    """Every connection gets ~2.5 MB/s (0.1 s per 256 KiB), four together ~10 MB/s, against
    DOWNLOAD_MIN_RATE_KBPS=4000: the sum passes where one stream alone is given up."""
    monkeypatch.setenv("DOWNLOAD_MIN_RATE_KBPS", "4000")
    monkeypatch.setenv("DOWNLOAD_RATE_WINDOW_S", "0.5")
    data = model(16, seed=57)
    with ModelServer() as srv:
        url = srv.add(PATH, data, chunk_delay=0.1)
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "summed"})
        assert placed.sha256 == hashlib.sha256(data).hexdigest()
        monkeypatch.setenv("DOWNLOAD_CONNECTIONS", "1")
        with pytest.raises(DownloadFailed, match="DOWNLOAD_MIN_RATE_KBPS"):
            make_cache().ensure("checkpoint", {"url": url, "name": "alone"})
    assert leftovers(models_dir) == ["checkpoints/summed.safetensors"]


def test_announced_size_over_the_cap_is_refused_before_any_range(models_dir, monkeypatch):
    monkeypatch.setenv("CACHE_MAX_GB", "0.005")  # ~5.4 MB, the file is ~8.4 MB
    with ModelServer() as srv:
        url = srv.add(PATH, model(seed=58))
        with pytest.raises(ValidationFailed, match="CACHE_MAX_GB=0.005"):
            make_cache().ensure("checkpoint", {"url": url, "name": "capped"})
        assert len(srv.gets(PATH)) == 1 and bounded(srv) == []
    assert leftovers(models_dir) == []


@pytest.mark.parametrize("redirected", [False, True])
def test_ranges_follow_the_redirect_chain_and_its_token_rules(models_dir, monkeypatch, redirected):
    """Civitai answers the file itself (its token rides along on every range: the route
    demands it) or redirects to a storage host on another origin (which gets no token;
    the ranges go there, not back through the API)."""
    monkeypatch.setenv("CIVITAI_TOKEN", "civ-range-token-42")
    data = model(seed=59)
    auth = "Bearer civ-range-token-42"
    with ModelServer() as api, ModelServer(host="localhost") as cdn:
        monkeypatch.setenv("CIVITAI_BASE_URL", api.url)
        api_path = "/api/download/models/77"
        if redirected:
            api.add(api_path, b"", [("redirect", cdn.add(PATH, data) + "?sig=s3cr3t")], auth=auth)
        else:
            api.add(api_path, data, auth=auth)
        placed = make_cache().ensure("checkpoint", {"civitai": 77, "file": "c.safetensors"})
        served, path = (cdn, PATH) if redirected else (api, api_path)
        assert len(bounded(served, path)) == 7
        assert len(api.gets(api_path)) == (1 if redirected else 8)
        assert all(s.headers.get("Authorization") == (None if redirected else auth) for s in served.gets(path))
        if redirected:
            assert all(s.path == PATH + "?sig=s3cr3t" for s in cdn.gets(PATH))
    assert placed.sha256 == hashlib.sha256(data).hexdigest()


def test_holey_part_of_a_crashed_ranged_download_starts_over(models_dir):
    """A worker killed mid-way leaves a full-size part with holes, and the marker saying so
    (a real server would answer the resume from its end with 416, this one with an empty
    206: the holes would be kept); the next download must not trust it."""
    data = model(seed=60)
    with ModelServer() as srv:
        ref = {"url": srv.add(PATH, data), "name": "crashed"}
        part = models_dir / "checkpoints" / parse_ref("checkpoint", ref, None).part_name
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            f.truncate(len(data))
        holey_marker(part).touch()
        placed = make_cache().ensure("checkpoint", ref)
        assert srv.ranges(PATH)[0] == (0, None)
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / "checkpoints/crashed.safetensors").read_bytes() == data
    assert leftovers(models_dir) == ["checkpoints/crashed.safetensors"]
