"""The catalog and the model cache, as one job's name resolution uses them.

Lookups in a broken catalog answer "not in the catalog", so the job's real problem is the
one reported; a model the cache cannot place becomes a problem of the job (reported with
all the others), and what was placed or is in use is kept for the result and for eviction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from a1111.resolved import UsedModel
from cache import KIND_DIRS, ModelCache
from cache.safety import MODEL_EXTS
from schemas.errors import DownloadFailed, ModelNotFound, Problem, ValidationFailed
from schemas.job import Source, ref_value


class JobModels:
    """The catalog entries and cache placements of one job."""

    def __init__(self, settings: Any, catalog: Any, cache: Any, problems: list[Problem]) -> None:
        self.settings, self.catalog, self._cache = settings, catalog, cache
        self.problems = problems  # the job's problems, shared with the resolver
        self.placed: list[dict[str, Any]] = []
        self.in_use: list[str] = []  # MODELS_DIR-relative paths, kept from eviction
        self.uses: list[UsedModel] = []  # the job's model files on MODELS_DIR

    def cache(self) -> Any:
        if self._cache is None:
            self._cache = ModelCache(self.settings, self.catalog)
        return self._cache

    def entry(self, ref: str, kind: str | None = None) -> Any:
        """The catalog entry for an id / file name / stem (of ``kind`` when given)."""
        if self.catalog is None:
            return None
        try:
            entry = self.catalog.get(ref)
        except Exception:  # noqa: BLE001 - a broken catalog must not hide the real problem
            return None
        if entry is not None and kind is not None and getattr(entry, "kind", kind) != kind:
            return None
        return entry

    def ids(self, kind: str) -> list[str]:
        if self.catalog is None:
            return []
        try:
            return [e.id for e in self.catalog.entries(kind)]
        except Exception:  # noqa: BLE001
            return []

    def place(self, kind: str, ref: str | Source, fld: str) -> Any | None:
        """Ask the cache to place a model; None (and a problem recorded) when it cannot."""
        try:
            placed = self.cache().ensure(kind, ref_value(ref), in_use=tuple(self.in_use))
        except (ValidationFailed, ModelNotFound, DownloadFailed) as exc:  # reported with every other problem
            self.problems.append(Problem(fld, exc.message, exc.error_type))
            return None
        self.placed.append({"kind": kind, "name": placed.name, "path": placed.path,
                            "downloaded": placed.downloaded, "bytes": placed.bytes})
        return placed

    def use(self, kind: str, name: str, relative: str, listed_path: str | None = None) -> None:
        """Note a model the job generates with: ``relative`` is kept from this job's own
        evictions, and its file, when it lives on MODELS_DIR, is held and checked before generating.

        ``listed_path`` is where A1111 lists the file (LoRAs, checkpoints); a file A1111 has from
        outside MODELS_DIR is not the cache's to evict, so it is not checked either.
        """
        self.in_use.append(relative)
        path = self._on_volume(listed_path) if listed_path else self._found(kind, name)
        if path is not None and all(u.path != path for u in self.uses):
            self.uses.append(UsedModel(kind, name, path))

    def _on_volume(self, listed_path: str) -> str | None:
        root = os.path.realpath(self.settings.models_dir)
        # The folder is resolved, not the file: a file that has vanished is still placed.
        real = os.path.join(os.path.realpath(os.path.dirname(listed_path)), os.path.basename(listed_path))
        if os.path.commonpath([root, real]) != root or real == root:
            return None
        return Path(os.path.relpath(real, root)).as_posix()

    def _found(self, kind: str, name: str) -> str | None:
        """MODELS_DIR-relative path of a model A1111 lists without a path (embeddings): the
        file in the kind's folder, else the one the cache registry knows (since removed)."""
        folder = KIND_DIRS[kind]
        for ext in MODEL_EXTS:
            if (Path(self.settings.models_dir) / folder / f"{name}{ext}").is_file():
                return f"{folder}/{name}{ext}"
        try:
            entries = self.cache().registry.entries()
        except Exception:  # noqa: BLE001 - an unreadable registry only means "not ours"
            return None
        return next((p for p, e in entries.items() if e.get("kind") == kind and e.get("name") == name), None)
