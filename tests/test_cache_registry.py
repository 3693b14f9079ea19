"""Registry under concurrent processes, rebuild after corruption, one download per file, eviction."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from cache import KIND_DIRS, ModelCache
from cache.catalog import Catalog
from cache.evict import choose_victims
from cache.registry import Registry
from schemas.settings import Settings
from tests.support.model_files import safetensors_bytes
from tests.support.servers import ModelServer


def settings_for(models_dir: Path, **over) -> Settings:
    base = Settings.from_env()
    return dataclasses.replace(base, models_dir=models_dir, download_allow_private=True, **over)


def read_registry(models_dir: Path) -> dict:
    return json.loads((models_dir / "cache_registry.json").read_text())["entries"]


# ------------------------------------------------------------------ corrupt / missing registry
@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"entries": {"x": 3}}', b"\x00\xff"])
def test_corrupt_registry_is_rebuilt_by_scanning(models_dir, content):
    (models_dir / "loras/kept.safetensors").write_bytes(safetensors_bytes(seed=1))
    (models_dir / "checkpoints/base.safetensors").write_bytes(safetensors_bytes(seed=2))
    (models_dir / "cache_registry.json").write_bytes(content)
    placed = ModelCache(settings_for(models_dir), Catalog()).ensure("lora", "kept")
    assert placed.path == "loras/kept.safetensors"
    entries = read_registry(models_dir)
    assert set(entries) == {"loras/kept.safetensors", "checkpoints/base.safetensors"}
    assert entries["loras/kept.safetensors"]["uses"] == 1
    assert entries["checkpoints/base.safetensors"]["kind"] == "checkpoint"
    assert (models_dir / "cache_registry.json.corrupt").read_bytes() == content


def test_missing_registry_reads_as_a_scan(models_dir):
    (models_dir / "embeddings/e.safetensors").write_bytes(safetensors_bytes(seed=3))
    (models_dir / "embeddings/.e.safetensors.part").write_bytes(b"partial")
    entries = Registry(models_dir, KIND_DIRS).entries()
    assert list(entries) == ["embeddings/e.safetensors"] and entries["embeddings/e.safetensors"]["downloaded"] is False
    assert not (models_dir / "cache_registry.json").exists()  # reading never writes


def _touch_many(models_dir: str, worker: int, count: int, start) -> None:
    start.wait()
    reg = Registry(Path(models_dir), KIND_DIRS)
    for i in range(count):
        rel = f"loras/w{worker}_{i}.safetensors"
        (Path(models_dir) / rel).write_bytes(b"x")
        reg.touch(rel, {"kind": "lora", "name": f"w{worker}_{i}", "path": rel, "bytes": 1})


def test_concurrent_registry_updates_lose_nothing(models_dir):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_touch_many, args=(str(models_dir), w, 8, start)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    entries = read_registry(models_dir)
    assert len(entries) == 32 and all(e["uses"] == 1 for e in entries.values())


# ------------------------------------------------------------------ one download across processes
def _prefetch(models_dir: str, refs: dict, start, out) -> None:
    os.environ["DOWNLOAD_BACKOFF_S"] = "0.01"
    cache = ModelCache(settings_for(Path(models_dir)), Catalog())
    start.wait()
    try:
        out.put(cache.prefetch(refs))
    except Exception as exc:  # reported to the test instead of a silent exit code
        out.put({"error": repr(exc)})


def test_four_processes_download_each_file_once(models_dir):
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    with ModelServer() as srv:
        # 2 MB in 256 KB chunks, 40 ms apart: each transfer takes ~0.3 s, so the processes overlap.
        shared = [srv.add(f"/shared{i}.safetensors", safetensors_bytes(size=2_000_000, seed=i), chunk_delay=0.04)
                  for i in range(2)]
        own = [srv.add(f"/own{w}.safetensors", safetensors_bytes(size=300_000, seed=10 + w)) for w in range(4)]
        procs = []
        for w in range(4):
            refs = {"lora": [{"url": u, "name": f"shared{i}"} for i, u in enumerate(shared)]
                    + [{"url": own[w], "name": f"own{w}"}],
                    "checkpoint": [{"url": shared[0], "name": "shared0"}]}
            procs.append(ctx.Process(target=_prefetch, args=(str(models_dir), refs, start, out)))
        for p in procs:
            p.start()
        start.set()
        results = [out.get(timeout=90) for _ in procs]
        for p in procs:
            p.join(30)
        # shared0 is asked for as a LoRA and as a checkpoint: two files, one download each.
        assert len(srv.gets("/shared0.safetensors")) == 2
        assert len(srv.gets("/shared1.safetensors")) == 1
        assert all(len(srv.gets(f"/own{w}.safetensors")) == 1 for w in range(4))
    assert all(isinstance(r, list) for r in results), results
    downloads = {}
    for r in results:
        assert len(r) == 4
        for m in r:
            downloads.setdefault(m["path"], []).append(m["downloaded"])
    assert sorted(downloads["loras/shared1.safetensors"]) == [False, False, False, True]
    assert sorted(downloads["checkpoints/shared0.safetensors"]) == [False, False, False, True]
    entries = read_registry(models_dir)
    expected = {"loras/shared0.safetensors", "loras/shared1.safetensors", "checkpoints/shared0.safetensors",
                *(f"loras/own{w}.safetensors" for w in range(4))}
    assert set(entries) == expected
    assert entries["loras/shared1.safetensors"]["uses"] == 4
    assert not [p for p in models_dir.rglob("*.part")]


# ------------------------------------------------------------------ eviction
def _entry(name: str, size: int, last_used: float, **kw) -> tuple[str, dict]:
    path = f"loras/{name}.safetensors"
    return path, {"name": name, "path": path, "bytes": size, "last_used": last_used, "downloaded": True, **kw}


def test_choose_victims_is_lru_and_respects_protection():
    entries = dict([
        _entry("old", 100, 1.0), _entry("older_pinned", 100, 0.5, pinned=True), _entry("mid", 100, 2.0),
        _entry("found", 500, 0.1, downloaded=False), _entry("in_use", 100, 0.2), _entry("new", 100, 3.0),
    ])
    assert choose_victims(entries, 400, []) == ["loras/in_use.safetensors"]
    # pinned files count against the budget but are never chosen
    assert choose_victims(entries, 250, ["in_use"]) == \
        ["loras/old.safetensors", "loras/mid.safetensors", "loras/new.safetensors"]
    assert choose_victims(entries, 0, ["in_use", "loras/new.safetensors"]) == \
        ["loras/old.safetensors", "loras/mid.safetensors"]
    assert choose_victims(entries, 10_000, []) == []


def test_cache_max_gb_evicts_least_recently_used_downloads(models_dir, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_BACKOFF_S", "0.01")
    size = 100_000
    budget_gb = 2.5 * size / 1024**3
    settings = settings_for(models_dir, cache_max_gb=budget_gb)
    (models_dir / "loras/operator.safetensors").write_bytes(safetensors_bytes(size=size, seed=9))
    with ModelServer() as srv:
        urls = {n: srv.add(f"/{n}.safetensors", safetensors_bytes(size=size, seed=i))
                for i, n in enumerate(["a", "b", "c", "d"])}
        catalog = Catalog.from_dict({"models": [{"id": "a", "kind": "lora", "file": "a.safetensors",
                                                 "source": {"url": urls["a"]}, "default": True}]})
        cache = ModelCache(settings, catalog)
        cache.ensure("lora", "a")
        cache.ensure("lora", {"url": urls["b"], "name": "b"})
        cache.ensure("lora", {"url": urls["c"], "name": "c"}, in_use=["b"])
        names = sorted(p.stem for p in (models_dir / "loras").glob("*.safetensors"))
        assert names == ["a", "b", "c", "operator"]  # a: catalog default, b: in use, operator: not ours
        cache.ensure("lora", {"url": urls["d"], "name": "d"}, in_use=["c"])
        names = sorted(p.stem for p in (models_dir / "loras").glob("*.safetensors"))
        assert names == ["a", "c", "d", "operator"]  # b: the only download neither default nor in use
    assert set(read_registry(models_dir)) == {f"loras/{n}.safetensors" for n in ("a", "c", "d", "operator")}
