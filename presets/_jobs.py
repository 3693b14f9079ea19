"""Helpers shared by the presets: building a step's job from the caller's job."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from schemas.errors import Problem, problems_error

# A1111 seeds are 32-bit; -1 asks A1111 for a random one.
SEED_LIMIT = 2**32


def caller_set(job: Any) -> set[str]:
    """Fields the caller gave explicitly (pydantic's record), which win over preset defaults."""
    return set(getattr(job, "model_fields_set", set()))


def rebuild(job: Any, values: dict[str, Any]) -> Any:
    """A validated copy of ``job`` with ``values`` applied on top of the caller's fields.

    Going through validation (not ``model_copy``) keeps nested models typed and checks the
    preset's own values with the same rules as the caller's.
    """
    data = job.model_dump(exclude_unset=True, by_alias=False)
    data.update(values)
    try:
        return type(job).model_validate(data)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        errors = getattr(exc, "errors", lambda: [])()
        problems = [Problem(".".join(str(p) for p in e.get("loc", ())), e.get("msg", "")) for e in errors] \
            or [Problem("preset", str(exc))]
        raise problems_error(problems, lead="the preset's settings do not combine with this job's fields: "
                                            f"{problems[0].field}: ") from None


def concrete_seed(job: Any) -> int:
    """The caller's seed, or a random one picked here so several steps can share it."""
    seed = getattr(job, "seed", -1)
    if seed is None or seed < 0:
        return secrets.randbelow(SEED_LIMIT)
    return int(seed)


def a1111_name(catalog: Any, ref: str) -> str:
    """The name A1111 lists a catalog model under (its file stem); ``ref`` itself when the
    catalog does not know it (then it already is a file name or stem)."""
    entry = catalog.get(ref) if catalog is not None else None
    return Path(entry.file).stem if entry is not None else Path(ref).stem if ref.endswith(".safetensors") else ref


def module_file_name(catalog: Any, ref: str) -> str:
    """Forge lists VAE / text-encoder modules by file name (``ae.safetensors``)."""
    entry = catalog.get(ref) if catalog is not None else None
    return Path(entry.file).name if entry is not None else ref


def preset_config(catalog: Any, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Code defaults for a built-in preset, overridden key by key by models.json's
    ``presets.<name>`` section (so an operator can swap models without a code change)."""
    configured = (getattr(catalog, "presets", None) or {}).get(name) or {}
    merged = dict(defaults)
    for key, value in configured.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
