"""Preset input fields (rubber_tile colours, angle, quality profiles) and the cross-field checks they need.

The job model (schemas/job.py) uses these as field types; ``preset_problems`` holds the
checks that span several fields, so ``parse_job`` can report them together with every
other problem and ``presets.expand`` can re-check before building steps.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.errors import Problem
from schemas.messages import got as _got

# Colour names the rubber-tile prompt and colour map understand, with the RGB the map draws.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "red": (200, 30, 35),
    "green": (40, 150, 60),
    "blue": (35, 75, 190),
    "gray": (128, 128, 128),
    "brown": (120, 75, 40),
    "yellow": (240, 205, 40),
    "orange": (240, 130, 30),
    "purple": (120, 50, 150),
    "pink": (240, 140, 180),
}
ColorName = Literal["black", "white", "red", "green", "blue", "gray", "brown", "yellow", "orange", "purple", "pink"]
Quality = Literal["preview", "standard", "high"]
BUILTIN_PRESETS = ("rubber_tile", "flux")
# Fields that only mean something to one preset.
RUBBER_TILE_FIELDS = ("colors", "angle", "quality")


class RubberTileColor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ColorName
    # Integers only: a proportion of 33.3 is refused rather than rounded behind the caller's back.
    proportion: StrictInt = Field(ge=1, le=100)


# Field types for the job model.
RubberTileColors = list[RubberTileColor]
Angle = Annotated[StrictInt, Field(ge=0, le=180, description="degrees, 0..180")]


def rubber_tile_problems(colors: list[RubberTileColor] | None, angle: int | None) -> list[Problem]:
    problems: list[Problem] = []
    if not colors:
        problems.append(Problem("colors", "preset rubber_tile needs colors: a list of {name, proportion} with "
                                           f"names from {', '.join(COLOR_RGB)} and integer proportions summing to 100"))
    else:
        names = [c.name for c in colors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(Problem("colors", f"each colour may appear once; repeated: {', '.join(dupes)}"))
        total = sum(c.proportion for c in colors)
        if total != 100:
            problems.append(Problem("colors", f"colour proportions must sum to 100, got {total}"))
    if angle is not None and not 0 <= angle <= 180:
        problems.append(Problem("angle", f"angle must be an integer from 0 to 180 degrees, got {angle}"))
    return problems


def preset_name_problem(name: str, known: list[str]) -> Problem | None:
    """The problem of a preset name none of ``known`` is, with the closest ones suggested."""
    if name in known:
        return None
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    hint = ("did you mean " + " or ".join(f"'{c}'" for c in close) + "?") if close else ""
    return Problem("preset", f"unknown preset {_got(name)}; {hint + ' ' if hint else ''}known presets: "
                             f"{', '.join(known)}", hints={"suggestions": close, "allowed": known})


def preset_problems(job: Any) -> list[Problem]:
    """Cross-field problems of a parsed job's preset fields ([] when fine).

    Whether a catalog preset name exists is checked by ``presets.expand`` (it needs the
    catalog); here only the built-in presets' own fields are checked.
    """
    preset = getattr(job, "preset", None)
    problems: list[Problem] = []
    if preset != "rubber_tile":
        for name in RUBBER_TILE_FIELDS:
            if getattr(job, name, None) is not None:
                problems.append(Problem(name, f"{name} is only used with preset 'rubber_tile'"))
    else:
        problems += rubber_tile_problems(getattr(job, "colors", None), getattr(job, "angle", None))
    urls = getattr(job, "lora_urls", None) or []
    scales = getattr(job, "lora_scales", None)
    if scales is not None and len(scales) != len(urls):
        problems.append(Problem("lora_scales", f"lora_scales needs one weight per lora_urls entry "
                                                f"({len(urls)}), got {len(scales)}"))
    return problems
