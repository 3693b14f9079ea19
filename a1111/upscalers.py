"""Check the upscale action's upscaler names against /sdapi/v1/upscalers before extras run.

A1111 fails an unknown name only after the request (500 AssertionError ``could not find
upscaler named X``, recording ``extra_single_image_unknown_upscaler``), so every name is
looked up first, with suggestions. A catalog upscaler (e.g. ``4x-UltraSharp``) that A1111
does not list is placed on the volume through the cache (a pickled ``.pth`` only when its
catalog entry pins a sha256 or ALLOW_PICKLE_MODELS=1: cache/safety.check_format). A1111 v1.10
reads its upscaler folder only when it starts and has no route to rescan it, so such a job
fails with a message saying the file is in place and usable after a restart, and asks
RunPod for a fresh worker (``refresh_worker``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from a1111.matching import unknown
from a1111.state import state_for
from schemas.errors import ModelNotFound, Problem, WorkerError, problems_error

FIELDS = ("upscaler_1", "upscaler_2")


def start_only_message(fld: str, name: str, path: str) -> str:
    """The one sentence for an upscaler placed now that A1111 can use only after a restart."""
    return (f"{fld} '{name}' was not installed on this worker; it has been placed in MODELS_DIR/{path}, but "
            "A1111 reads its upscaler folder only when it starts, so it becomes usable after the worker "
            "restarts (this worker is being recycled: send the job again). To have it on every new worker "
            f"from the start, add {name} to START_MODELS or flag its catalog entry at_start in models.json")


def _place(fld: str, name: str, cache: Any) -> Problem:
    try:
        placed = cache.ensure("upscaler", name)
    except WorkerError as exc:
        return Problem(fld, f"{fld} '{name}' is not installed and could not be placed: {exc.message}", exc.error_type)
    return Problem(fld, start_only_message(fld, name, placed.path), ModelNotFound.error_type,
                   hints={"placed": placed.path, "usable_after_restart": True})


def _in_catalog(catalog: Any, name: str) -> bool:
    try:
        entry = catalog.get(name) if catalog is not None else None
    except Exception:  # noqa: BLE001 - a broken catalog must not hide the real problem
        return False
    return entry is not None and getattr(entry, "kind", None) == "upscaler"


def _catalog_ids(catalog: Any) -> list[str]:
    try:
        return [e.id for e in catalog.entries("upscaler")] if catalog is not None else []
    except Exception:  # noqa: BLE001
        return []


def check_upscalers(job: Any, settings: Any, catalog: Any, cache: Any) -> dict[str, str]:
    """The job's upscaler fields -> the names A1111 lists; raises one error for every name
    that is unknown or not usable until a restart."""
    lists = state_for(settings).lists
    names: dict[str, str] = {}
    problems: list[Problem] = []
    for fld in FIELDS:
        name = getattr(job, fld)
        if name is None or (fld == "upscaler_2" and name.lower() == "none"):
            continue
        entry = lists.find("upscaler", name) or lists.find("upscaler", name, fresh=True)
        if entry is not None:
            names[fld] = str(entry["name"])
        elif _in_catalog(catalog, name):
            problems.append(_place(fld, name, cache))
        else:
            listed = [str(e.get("name")) for e in lists.models("upscaler")]
            problem = unknown(fld, "upscaler", name, listed + _catalog_ids(catalog))
            problems.append(replace(problem, message=f"{fld}: {problem.message} (GET /sdapi/v1/upscalers)"))
    if problems:
        restart = any(p.hints.get("usable_after_restart") for p in problems)
        raise problems_error(problems, **({"refresh_worker": True} if restart else {}))
    return names
