"""Hugging Face downloads against the Hub's resolve routes served locally (ModelServer via
HF_ENDPOINT): the body is hashed as it arrives and checked against the sha256 the Hub reports,
so a model is written to the volume once and not read back to hash it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from schemas.errors import DownloadFailed
from tests.support.cache import fast_downloads, make_cache
from tests.support.model_files import safetensors_bytes
from tests.support.servers import ModelServer

PROC_IO = Path("/proc/self/io")


@pytest.fixture(autouse=True)
def hub_env(monkeypatch, models_dir):
    fast_downloads(monkeypatch, models_dir, read_timeout_s=60, HF_HOME=str(models_dir.parent / "hf-home"))
    # An empty HF cache of this test's own (huggingface-hub fixes its cache path at import).
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(models_dir.parent / "hf-cache"))


def rchar() -> int:
    """Bytes this process has read through read(2)-like calls so far: files and sockets alike."""
    line = next(ln for ln in PROC_IO.read_text().splitlines() if ln.startswith("rchar:"))
    return int(line.split()[1])


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.relative_to(root).as_posix().startswith(".locks/"))


@pytest.mark.skipif(not PROC_IO.exists(), reason="needs Linux /proc/self/io")
def test_hub_download_is_not_read_back_from_disk(models_dir, monkeypatch):
    """A 64 MB LFS file: the bytes this process reads during the download stay far below its size.

    rchar counts read(2)/readv(2) on any descriptor, but sockets are read with recv(2)
    (``socket.recv_into``), which it leaves out; so rchar here is file reads (the safetensors
    header check, the registry; a small download first gets the imports of first use out of the
    way). Hashing the file after the
    download would add its whole size; a socket read counted after all would too, so the
    body's size over the socket is printed beside it."""
    data = safetensors_bytes(size=64 * 1024 * 1024, seed=31)
    route = "/owner/big/resolve/main/big.safetensors"
    # One stream: on a loaded machine the stream may look slow enough for the ranged parallel
    # download to take over, and the bytes in flight on the first stream would count as sent.
    monkeypatch.setenv("DOWNLOAD_CONNECTIONS", "1")
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/big", "big.safetensors", data)
        hub.add_hf("owner/warm", "warm.safetensors", safetensors_bytes(seed=30))
        make_cache().ensure("lora", {"hf": "owner/warm", "file": "warm.safetensors"})  # imports done
        before = rchar()
        placed = make_cache().ensure("checkpoint", {"hf": "owner/big", "file": "big.safetensors"})
        read = rchar() - before
        sent = hub.sent[route]
    print(f"\n{len(data)} byte Hub download: rchar grew by {read} bytes; body over the socket {sent} bytes")
    assert sent == len(data)
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert read < 1024 * 1024, f"{read} bytes read from files while downloading a {len(data)} byte file"


def test_body_that_is_not_the_file_the_hub_describes_is_refused(models_dir, monkeypatch):
    """A Hub whose reported LFS sha256 is not the sha256 of the body it sends (a body damaged on
    the way, or a CDN serving something else): nothing is kept."""
    data = safetensors_bytes(size=300_000, seed=32)
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/repo", "m.safetensors", data, reported_sha256="ab" * 32)
        with pytest.raises(DownloadFailed, match="does not match the expected " + "ab" * 32):
            make_cache().ensure("lora", {"hf": "owner/repo", "file": "m.safetensors"})
    assert files_under(models_dir) == []


def test_catalog_pin_is_compared_with_the_hubs_sha256_before_downloading(models_dir, monkeypatch):
    data = safetensors_bytes(size=300_000, seed=33)
    pinned = "cd" * 32
    cat = {"models": [{"id": "pinned", "kind": "lora", "file": "m.safetensors", "sha256": pinned,
                       "source": {"hf": "owner/repo", "file": "m.safetensors"}}]}
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/repo", "m.safetensors", data)
        with pytest.raises(DownloadFailed) as info:
            make_cache(cat).ensure("lora", "pinned")
        assert hub.gets("/owner/repo/resolve/main/m.safetensors") == []  # refused on the HEAD alone
    assert info.value.message == (f"lora 'pinned': the downloaded file's sha256 {hashlib.sha256(data).hexdigest()} "
                                  f"does not match the expected {pinned}; nothing was kept")
    assert files_under(models_dir) == []


def test_catalog_pin_that_matches_is_downloaded_and_registered(models_dir, monkeypatch):
    data = safetensors_bytes(size=300_000, seed=34)
    sha = hashlib.sha256(data).hexdigest()
    cat = {"models": [{"id": "pinned", "kind": "lora", "file": "m.safetensors", "sha256": sha.upper(),
                       "source": {"hf": "owner/repo", "file": "m.safetensors"}}]}
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/repo", "m.safetensors", data)
        placed = make_cache(cat).ensure("lora", "pinned")
    assert placed.sha256 == sha and placed.downloaded
    entry = json.loads((models_dir / "cache_registry.json").read_text())["entries"]["loras/m.safetensors"]
    assert entry["sha256"] == sha


def test_file_kept_in_git_is_hashed_as_it_streams(models_dir, monkeypatch):
    """A small non-LFS file: the Hub's ETag is a git blob id, not a sha256, so there is nothing to
    compare with; the sha256 recorded is the one computed while it streamed."""
    data = safetensors_bytes(size=20_000, seed=35)
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/small", "e.safetensors", data, lfs=False)
        placed = make_cache().ensure("embedding", {"hf": "owner/small", "file": "e.safetensors"})
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / placed.path).read_bytes() == data


def _seed_hf_cache(models_dir: Path, repo: str, file: str, content: bytes) -> None:
    snap = models_dir.parent / "hf-cache" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / file).write_bytes(content)


def test_file_in_the_local_hf_cache_is_copied_not_downloaded(models_dir, monkeypatch):
    data = safetensors_bytes(size=300_000, seed=36)
    _seed_hf_cache(models_dir, "owner/repo", "m.safetensors", data)
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/repo", "m.safetensors", data)
        placed = make_cache().ensure("lora", {"hf": "owner/repo", "file": "m.safetensors"})
        assert hub.gets("/owner/repo/resolve/main/m.safetensors") == []
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / placed.path).read_bytes() == data


def test_damaged_hf_cache_entry_is_downloaded_instead(models_dir, monkeypatch):
    data = safetensors_bytes(size=300_000, seed=37)
    _seed_hf_cache(models_dir, "owner/repo", "m.safetensors", safetensors_bytes(size=300_000, seed=38))
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf("owner/repo", "m.safetensors", data)
        placed = make_cache().ensure("lora", {"hf": "owner/repo", "file": "m.safetensors"})
        assert len(hub.gets("/owner/repo/resolve/main/m.safetensors")) == 1
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / placed.path).read_bytes() == data
