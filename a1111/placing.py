"""The catalog and the model cache, as one job's name resolution uses them.

Lookups in a broken catalog answer "not in the catalog", so the job's real problem is the
one reported; a model the cache cannot place becomes a problem of the job (reported with
all the others), and what was placed or is in use is kept for the result and for eviction.
"""

from __future__ import annotations

from typing import Any

from cache import ModelCache
from schemas.errors import DownloadFailed, ModelNotFound, Problem, ValidationFailed
from schemas.job import Source, ref_value


class JobModels:
    """The catalog entries and cache placements of one job."""

    def __init__(self, settings: Any, catalog: Any, cache: Any, problems: list[Problem]) -> None:
        self.settings, self.catalog, self._cache = settings, catalog, cache
        self.problems = problems  # the job's problems, shared with the resolver
        self.placed: list[dict[str, Any]] = []
        self.in_use: list[str] = []  # MODELS_DIR-relative paths, kept from eviction

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
