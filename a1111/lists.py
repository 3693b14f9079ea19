"""A1111's live lists (models, samplers, schedulers, its OpenAPI document), read once and kept.

The lists change only when files are added, so they are kept for the worker's life and
re-read when a name is missing from one (a file may have been added since); after the
cache places a model, A1111 is asked to rescan that kind's folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from a1111.matching import (
    VAE_CHOICES,
    checkpoint_stem,
    find_checkpoint,
    find_embedding,
    find_lora,
    find_scheduler,
    find_upscaler,
    find_vae,
    split_sampler,
)
from schemas.errors import A1111Error, WorkerError


def _as_list(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _checkpoints(raw: Any) -> list[dict]:
    # A1111 selects a checkpoint by its title: an entry without one cannot be used.
    return [e for e in _as_list(raw) if isinstance(e.get("title"), str)]


def _embeddings(raw: Any) -> dict[str, dict]:
    """name -> entry (with ``skipped`` True for those A1111 could not use now)."""
    out: dict[str, dict] = {}
    if isinstance(raw, dict):
        for state in ("loaded", "skipped"):
            for name, entry in (raw.get(state) or {}).items():
                out[str(name)] = {**(entry if isinstance(entry, dict) else {}), "skipped": state == "skipped"}
    return out


log = logging.getLogger(__name__)
OPTIONS = "/sdapi/v1/options"


@dataclass(frozen=True)
class ModelList:
    """How A1111 lists one kind of model."""

    route: str                            # GET route of the list
    refresh: str | None                   # POST /sdapi/v1/refresh-<refresh> rescans the kind's folder;
                                          # None: A1111 scans it only when it starts
    parse: Callable[[Any], Any]           # A1111's answer -> the usable entries
    find: Callable[[str, Any], Any]       # (name, entries) -> the matching entry, or None


MODEL_LISTS: dict[str, ModelList] = {
    "checkpoint": ModelList("/sdapi/v1/sd-models", "checkpoints", _checkpoints, find_checkpoint),
    "lora": ModelList("/sdapi/v1/loras", "loras", _as_list, find_lora),
    "embedding": ModelList("/sdapi/v1/embeddings", "embeddings", _embeddings, find_embedding),
    # A1111 v1.10 reads its upscaler folders once, at start (modules/modelloader.load_upscalers
    # from initialize; no API route rescans them).
    "upscaler": ModelList("/sdapi/v1/upscalers", None, _as_list, find_upscaler),
}


class LiveLists:
    """One A1111's lists, each read on first use and again when asked for ``fresh``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.families: dict[str, str | None] = {}  # checkpoint title -> family
        # The checkpoint the last job stated (override_settings_restore_afterwards is false,
        # so it stays loaded): a job naming none keeps it without asking A1111 each time.
        self.loaded: str | None = None

    def forget(self) -> None:
        """Drop everything read so far: the next use reads A1111's lists again."""
        with self._lock:
            self._data.clear()
            self.families = {}
            self.loaded = None

    def get(self, path: str, *, fresh: bool = False) -> Any:
        with self._lock:
            if not fresh and path in self._data:
                return self._data[path]
        value = self.client.get(path)
        with self._lock:
            self._data[path] = value
        return value

    def models(self, kind: str, *, fresh: bool = False) -> Any:
        table = MODEL_LISTS[kind]
        return table.parse(self.get(table.route, fresh=fresh))

    def find(self, kind: str, name: str, *, fresh: bool = False) -> Any:
        """The listed entry ``name`` means (a checkpoint or LoRA entry, an embedding's key), or None."""
        return MODEL_LISTS[kind].find(name, self.models(kind, fresh=fresh))

    def refresh(self, kind: str) -> None:
        """Ask A1111 to rescan the folder of ``kind``; the next fresh read shows what it found.
        Raises A1111Error for a kind A1111 rescans only when it starts (upscalers)."""
        route = MODEL_LISTS[kind].refresh
        if route is None:
            raise A1111Error(f"A1111 has no route that rescans its {kind} folder; it reads it when it starts")
        self.client.refresh(route)

    def samplers(self, fresh: bool = False) -> list[dict]:
        return _as_list(self.get("/sdapi/v1/samplers", fresh=fresh))

    def schedulers(self, fresh: bool = False) -> list[dict]:
        return _as_list(self.get("/sdapi/v1/schedulers", fresh=fresh))

    def checkpoints(self, fresh: bool = False) -> list[dict]:
        return self.models("checkpoint", fresh=fresh)

    def loras(self, fresh: bool = False) -> list[dict]:
        return self.models("lora", fresh=fresh)

    def embeddings(self, fresh: bool = False) -> dict[str, dict]:
        return self.models("embedding", fresh=fresh)

    def vaes(self, fresh: bool = False) -> list[dict]:
        """A1111's VAE files ({model_name, filename}); Forge has no such route (404)."""
        return _as_list(self.get("/sdapi/v1/sd-vae", fresh=fresh))

    def options(self) -> Any:
        """A1111's options as read at first use, kept for the worker's life: a1111/hatch.py
        takes from them the values stated for the options a job leaves unset.

        A failed first read is kept too (as {}: the built-in defaults apply from then on):
        read again after a job had set an option, it would hand that job's value to every
        later job as the "default"."""
        with self._lock:
            if OPTIONS in self._data:
                return self._data[OPTIONS]
        try:
            return self.get(OPTIONS)
        except WorkerError as exc:
            log.warning("GET %s failed (%s): stating A1111's built-in default options from now on",
                        OPTIONS, exc.message[:200])
            with self._lock:
                self._data[OPTIONS] = {}
            return {}

    def listed_name(self, kind: str, name: str, *, fresh: bool = False) -> tuple[str | None, list[str]]:
        """(the name as A1111 lists it, or None; the listed names to suggest) for a checkpoint,
        vae, sampler or scheduler ``name``."""
        if kind == "checkpoint":
            listed = self.checkpoints(fresh=fresh)
            entry = find_checkpoint(name, listed)
            return (str(entry["title"]) if entry else None), [checkpoint_stem(e) for e in listed]
        if kind == "vae":
            vaes = self.vaes(fresh=fresh)
            return find_vae(name, vaes), [*VAE_CHOICES, *(str(v.get("model_name")) for v in vaes)]
        if kind == "sampler":
            samplers = self.samplers(fresh)
            split = split_sampler(name, samplers, [])  # a sampler only: hr_scheduler is its own field
            return (split[0] if split else None), [str(s.get("name")) for s in samplers]
        schedulers = self.schedulers(fresh)
        return find_scheduler(name, schedulers), [str(s.get("label") or s.get("name")) for s in schedulers]

    def openapi(self) -> dict:
        value = self.get("/openapi.json")
        return value if isinstance(value, dict) else {}
