"""Named presets defined in models.json (``presets.<name>.defaults``).

A catalog preset is a set of job defaults (checkpoint, LoRA stack, sampler, steps, cfg,
size, clip skip, negative prompt...). Fields the caller sets win; LoRAs are merged by
name (the caller's weight wins), so adding one LoRA keeps the preset's stack.
"""

from __future__ import annotations

from typing import Any

from presets._jobs import caller_set, rebuild
from schemas.errors import Problem, problems_error


def _lora_key(item: dict[str, Any]) -> str:
    return str(item.get("name") or item.get("url") or item)


def expand(job: Any, name: str, config: dict[str, Any]) -> Any:
    defaults = config.get("defaults")
    if not isinstance(defaults, dict):
        raise problems_error([Problem("preset", "catalog preset without defaults")],
                             message=f"preset {name!r} in models.json has no 'defaults' object")
    given = caller_set(job)
    values = {k: v for k, v in defaults.items() if k not in given and k != "loras"}
    preset_loras = [dict(x) for x in defaults.get("loras", [])]
    if preset_loras:
        own = [x.model_dump(exclude_unset=True, by_alias=False) if hasattr(x, "model_dump") else dict(x)
               for x in (getattr(job, "loras", None) or [])]
        merged = {_lora_key(x): x for x in preset_loras}
        merged.update({_lora_key(x): x for x in own})
        values["loras"] = list(merged.values())
    return rebuild(job, values)
