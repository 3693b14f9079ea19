"""The model files a job generates with: held from every worker's eviction, checked to be on
the volume right before generating, and recorded as used.

Another worker's eviction (CACHE_MAX_GB) or an operator can remove a file after this
worker's A1111 lists were read. A1111 then drops an unknown LoRA tag or embedding silently
and the job would "succeed" without it. So the job first marks its files in use
(cache/inuse.py), then checks that each is there: a file that vanished makes the worker
re-read A1111's list of that kind (which must not claim it any longer) and resolve the job
again, which places the model through the cache when it has a source; otherwise the job
fails with model_not_found naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from a1111.lists import MODEL_LISTS
from a1111.resolve import resolve
from a1111.resolved import Resolved, UsedModel
from a1111.state import state_for
from cache import KIND_DIRS
from cache.inuse import InUseMarker
from cache.registry import Registry
from cache.usage import record_uses
from schemas.errors import A1111Error, ModelNotFound
from schemas.job import Job

log = logging.getLogger(__name__)


def _gone(root: Path, uses: list[UsedModel]) -> list[UsedModel]:
    return [u for u in uses if not (root / u.path).is_file()]


def _described(gone: list[UsedModel]) -> str:
    return ", ".join(f"{u.kind} '{u.name}' (MODELS_DIR/{u.path})" for u in gone)


class HeldModels:
    """One job's hold on its model files; a context manager that releases it at the end."""

    def __init__(self, settings: Any, catalog: Any = None, *, cache: Any = None) -> None:
        # ``cache``: the job's ModelCache, so that placing a vanished model again keeps to the job's deadline.
        self.settings, self.catalog, self.cache = settings, catalog, cache
        self.root = Path(settings.models_dir)
        self.marker = InUseMarker(self.root)

    def __enter__(self) -> HeldModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.marker.release()

    def confirm(self, job: Job, resolved: Resolved) -> Resolved:
        """``resolved`` once its files are held and present, or resolved again when one vanished."""
        self.marker.hold(u.path for u in resolved.uses)
        gone = _gone(self.root, resolved.uses)
        if gone:
            log.warning("models gone from MODELS_DIR since A1111 listed them: %s; resolving again",
                        _described(gone))
            self._forget(gone)
            resolved = self._resolve_again(job, resolved, gone)
            self.marker.hold(u.path for u in resolved.uses)
            still = _gone(self.root, resolved.uses)
            if still:
                raise ModelNotFound(f"{_described(still)} vanished from MODELS_DIR right before generating "
                                    "(another worker's cache eviction, or removed by hand); run the job again")
        record_uses(Registry(self.root, KIND_DIRS), resolved.uses)
        return resolved

    def _forget(self, gone: list[UsedModel]) -> None:
        """A1111 rescans the kinds whose files vanished; the worker's lists are read again."""
        lists = state_for(self.settings).lists
        for kind in sorted({u.kind for u in gone} & MODEL_LISTS.keys()):
            try:
                lists.refresh(kind)
            except A1111Error as exc:  # the re-read below still drops what A1111 no longer has
                log.warning("POST /sdapi/v1/refresh-%s failed: %s", MODEL_LISTS[kind].refresh, exc.message)
            lists.models(kind, fresh=True)

    def _resolve_again(self, job: Job, first: Resolved, gone: list[UsedModel]) -> Resolved:
        try:
            again = resolve(job, self.settings, self.catalog, cache=self.cache)
        except ModelNotFound as exc:
            raise ModelNotFound(f"{_described(gone)} was listed by A1111 but its file is gone (another "
                                f"worker's cache eviction, or removed by hand) and could not be placed again: "
                                f"{exc.message}", details=exc.details, **exc.extra) from None
        seen = {p.get("path") for p in again.placed}
        again.placed = [p for p in first.placed if p.get("path") not in seen] + again.placed
        return again
