"""Presets: one job in, the list of generation steps out (and extra images after).

``expand`` is called once per job before anything is sent to A1111; ``finish`` after all
steps ran. Without a preset a job is one unlabelled step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from presets import catalog as catalog_presets
from presets import flux, rubber_tile
from schemas.errors import Problem, problems_error
from schemas.presets import BUILTIN_PRESETS, preset_name_problem, preset_problems

__all__ = ["Step", "expand", "finish"]


@dataclass(frozen=True)
class Step:
    label: str | None
    job: Any  # schemas.job.Job


def known_presets(catalog: Any) -> list[str]:
    return sorted(set(BUILTIN_PRESETS) | set(getattr(catalog, "presets", None) or {}))


def expand(job: Any, catalog: Any, settings: Any) -> list[Step]:
    """The generation steps of a job; raises ValidationFailed for bad preset input."""
    problems = preset_problems(job)
    if problems:
        raise problems_error(problems)
    name = getattr(job, "preset", None)
    if name is None:
        return [Step(None, job)]
    # models.json may also hold a section for a built-in preset: its settings, not a new preset.
    if name == rubber_tile.NAME:
        return [Step(label, j) for label, j in rubber_tile.expand(job, catalog, settings)]
    if name == flux.NAME:
        return [Step(label, j) for label, j in flux.expand(job, catalog, settings)]
    configured = (getattr(catalog, "presets", None) or {}).get(name)
    if isinstance(configured, dict):
        return [Step(None, catalog_presets.expand(job, name, configured))]
    problem = preset_name_problem(str(name), known_presets(catalog))
    raise problems_error([problem or Problem("preset", f"preset {name!r} has no settings in models.json")])


def finish(job: Any, outputs: list[dict]) -> list[tuple[str, str]]:
    """Extra (label, base64 PNG) images drawn by the worker after the steps ran."""
    if getattr(job, "preset", None) == rubber_tile.NAME and getattr(job, "colors", None):
        return [("colormap", rubber_tile.color_map_png(job))]
    return []
