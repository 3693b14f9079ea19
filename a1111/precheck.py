"""The names of a job whose fields are not all valid, checked in the same round as its fields.

A job with a bad ``steps`` and an unknown sampler would otherwise need two rounds: the
field problems first, the name problems once the fields are right. Here the names of the
fields that did validate are looked up in A1111's lists with nothing placed: no download
starts for a job that will fail anyway, and no job waits for a starting A1111 just to
learn that its ``steps`` are wrong. So names are checked here only when A1111 is already
ready (its lists come from the worker's cache after the first job); download sources
({hf|civitai|url}) are checked once the job is valid, by a1111/resolve.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from a1111.matching import checkpoint_stem, resolve_sampler, unknown
from a1111.state import state_for
from cache import KIND_DIRS
from schemas.errors import ModelNotFound, Problem, WorkerError
from schemas.job import Job
from schemas.presets import BUILTIN_PRESETS, preset_name_problem

log = logging.getLogger(__name__)


def name_problems(job: Job, settings: Any, catalog: Any) -> list[Problem]:
    """Problems of the names ``job`` gives (sampler, scheduler, preset, plain model names);
    [] for a name that may still be fine (a catalog id to download, a file on the volume)."""
    if job.action != "txt2img":
        return []
    problems = preset_problems_of(job, catalog)
    state = state_for(settings)
    if not state.readiness.ready:
        return problems
    try:
        return problems + _listed_name_problems(job, state.lists, catalog, settings)
    except WorkerError as exc:  # A1111 did not answer: the next round checks the names
        log.info("names not checked with the field problems: %s", exc.message[:200])
        return problems


def preset_problems_of(job: Job, catalog: Any) -> list[Problem]:
    if job.preset is None:
        return []
    known = sorted(set(BUILTIN_PRESETS) | set(getattr(catalog, "presets", None) or {}))
    problem = preset_name_problem(job.preset, known)
    return [problem] if problem else []


def _listed_name_problems(job: Job, lists: Any, catalog: Any, settings: Any) -> list[Problem]:
    _, _, problems = resolve_sampler(job.sampler_name, job.scheduler, lists.samplers(), lists.schedulers())
    if any(p.field == "sampler_name" for p in problems):  # a new sampler may have appeared
        _, _, problems = resolve_sampler(job.sampler_name, job.scheduler,
                                         lists.samplers(fresh=True), lists.schedulers(fresh=True))
    refs: list[tuple[str, str, Any]] = []
    if isinstance(job.checkpoint, str):
        refs.append(("checkpoint", "checkpoint", job.checkpoint))
    refs += [("lora", fld, ref) for ref, _, fld in job.lora_refs() if isinstance(ref, str)]
    refs += [("embedding", f"embeddings[{i}]", ref) for i, ref in enumerate(job.embeddings) if isinstance(ref, str)]
    reread: set[str] = set()  # at most one fresh read of each list per job, however many names miss
    for kind, fld, name in refs:
        if not _known(kind, name, lists, catalog, settings, reread):
            problems.append(unknown(fld, kind, name, _candidates(kind, lists, catalog),
                                    error_type=ModelNotFound.error_type))
    return problems


def _known(kind: str, name: str, lists: Any, catalog: Any, settings: Any, reread: set[str]) -> bool:
    entry = _catalog_entry(catalog, name, kind)
    if entry is not None:  # a catalog id: resolve places it (a download) once the job is valid
        return True
    if lists.find(kind, name) is not None:
        return True
    if kind not in reread:  # A1111 may have been given the file meanwhile
        reread.add(kind)
        if lists.find(kind, name, fresh=True) is not None:
            return True
    folder = Path(settings.models_dir) / KIND_DIRS[kind]
    try:  # a file on the volume A1111 does not list yet: resolve refreshes its list
        return any(p.stem.lower() == Path(name).stem.lower() for p in folder.iterdir() if p.is_file())
    except OSError:
        return False


def _catalog_entry(catalog: Any, name: str, kind: str) -> Any:
    try:
        entry = catalog.get(name) if catalog is not None else None
    except Exception:  # noqa: BLE001 - a broken catalog is reported by the next round
        return None
    return entry if entry is not None and getattr(entry, "kind", kind) == kind else None


def _candidates(kind: str, lists: Any, catalog: Any) -> list[str]:
    listed = lists.models(kind)
    names = ([checkpoint_stem(e) for e in listed] if kind == "checkpoint"
             else [str(e.get("name")) for e in listed] if kind == "lora" else list(listed))
    try:
        ids = [e.id for e in catalog.entries(kind)] if catalog is not None else []
    except Exception:  # noqa: BLE001
        ids = []
    return names + [i for i in ids if i not in names]
