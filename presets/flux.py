"""The Flux engine (``preset: "flux"``), Forge only.

Forge loads Flux's VAE and text encoders as separate files named in
``override_settings.forge_additional_modules`` (the job's ``modules`` field); the names
must be ones ``/sdapi/v1/sd-modules`` lists, because Forge drops unknown names silently and
then fails or draws garbage. ``a1111/extensions.py`` checks them before generation.
"""

from __future__ import annotations

from typing import Any

from presets._jobs import a1111_name, caller_set, module_file_name, preset_config, rebuild
from schemas.errors import Problem, problems_error

NAME = "flux"
# Overridable from models.json ``presets.flux``. Model values are catalog ids or file names.
DEFAULTS: dict[str, Any] = {
    "checkpoint": "flux1_dev_nf4",
    "modules": ["flux_ae", "flux_clip_l", "flux_t5xxl_fp8"],
    "width": 768,
    "height": 1344,
    "steps": 50,
    "cfg_scale": 1.0,  # Flux dev is guidance-distilled: real CFG stays at 1
    "distilled_cfg_scale": 3.7,
    # Forge's own Flux UI preset uses Euler with the Simple schedule.
    "sampler_name": "Euler",
    "scheduler": "Simple",
    "hires": {"steps": 10, "upscaler": "4x-UltraSharp"},
    "adetailer_models": ["face_yolov8s.pt", "hand_yolov8s.pt"],
}
PLAIN_FIELDS = ("width", "height", "steps", "cfg_scale", "distilled_cfg_scale", "sampler_name", "scheduler")


def expand(job: Any, catalog: Any, settings: Any) -> list[tuple[str | None, Any]]:
    if getattr(settings, "backend", "a1111") != "forge":
        raise problems_error(
            [Problem("preset", "flux requires WEBUI_BACKEND=forge")],
            message="preset 'flux' needs the Forge backend (WEBUI_BACKEND=forge): this worker runs A1111, which "
                    "cannot load Flux's separate VAE and text encoders")
    cfg = preset_config(catalog, NAME, DEFAULTS)
    given = caller_set(job)
    values: dict[str, Any] = {f: cfg[f] for f in PLAIN_FIELDS if f not in given}
    if "checkpoint" not in given:
        values["checkpoint"] = cfg["checkpoint"]
    if "modules" not in given:
        values["modules"] = [module_file_name(catalog, m) for m in cfg["modules"]]
    hires = getattr(job, "hires", None)
    if hires is not None:
        own = hires.model_dump(include=hires.model_fields_set)
        values["hires"] = {**cfg["hires"], **own}
    if getattr(job, "adetailer", None) is True:
        values["adetailer"] = [{"model": a1111_name(None, m)} for m in cfg["adetailer_models"]]
    return [(None, rebuild(job, values))]
