"""How to get a model that A1111 reads only at start, when a job names one it does not list.

Upscaler files (``--esrgan-models-path``) and ADetailer detectors are listed once, while
A1111 starts: placing the file during a txt2img/img2img job would not help that job, so
those jobs never download them (the upscale action does place a catalog upscaler it is
asked for and recycles the worker, a1111/upscalers.py, because upscaling is the whole job).
For a catalog model of those kinds, the job's error says what makes it present at the next
start (cache/at_start.py places START_MODELS and the catalog's ``at_start`` entries before
A1111 starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.safety import is_pickle

START_ONLY_KINDS = {"upscaler": "upscalers", "adetailer": "adetailer"}


@dataclass(frozen=True)
class StartOnly:
    """The catalog and volume a job's start-only names are looked up in."""

    catalog: Any  # cache.catalog.Catalog | None
    models_dir: Path
    backend: str = "a1111"
    allow_pickle: bool = False

    def hint(self, kind: str, name: str) -> str:
        """A sentence on how to make ``name`` listed, or "" when it is no catalog model of ``kind``."""
        entry = self.catalog.get(name) if self.catalog is not None else None
        if entry is None or entry.kind != kind or kind not in START_ONLY_KINDS:
            return ""
        rel = f"{START_ONLY_KINDS[kind]}/{entry.file}"
        if (self.models_dir / rel).is_file():
            return (f"MODELS_DIR/{rel} is on the volume, but A1111 reads {kind} files only at start: "
                    "restart the worker so it lists it")
        if self.backend in entry.at_start:
            how = ("it is flagged at_start in the catalog but was not placed when this worker started (see the "
                   "[start-models] lines of the container log); fix that and restart the worker")
        else:
            how = (f"add {entry.id} to START_MODELS (catalog id {entry.id!r}) and restart the worker, or put the "
                   f"file at MODELS_DIR/{rel} and restart")
        pickle = ""
        if is_pickle(entry.file) and entry.sha256 is None and not self.allow_pickle:
            pickle = (f"; {entry.file} is a pickle and its catalog entry pins no sha256, so it is placed only with "
                      "ALLOW_PICKLE_MODELS=1 or once its sha256 is pinned in models.json")
        return f"{kind} {entry.id!r} is a catalog model A1111 reads only at start and it is absent: {how}{pickle}"


def with_hint(message: str, hint: str) -> str:
    """``message`` with the start-time hint first, when there is one."""
    return f"{hint}. {message}" if hint else message
