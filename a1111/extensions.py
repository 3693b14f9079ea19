"""Payload fragments for hires fix, ADetailer, ControlNet and Forge modules. PURE.

The extensions accept malformed arguments silently (recordings ``ext_*``): a unit with a
misspelled key or without ``enabled`` is skipped, a legacy key is dropped, and a null
field can crash the hires pass, with only the server log saying why. So the fragment is
built here, key by key, as the servers actually read it. The names in it are checked
against the live lists before generation (a1111/extension_names.py).
"""

from __future__ import annotations

from typing import Any

from schemas.extensions import ADetailerUnit, ControlNetUnit, HiresSpec, adetailer_units

# Forge keeps the first pass's VAE / text encoders for the hires pass only when told so;
# its default (null) crashes the hires pass with a TypeError (recording
# forge/txt2img_hires_latent_no_hr_modules).
FORGE_SAME_MODULES = "Use same choices"


def _hires_fields(hires: HiresSpec, job: Any, backend: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": hires.scale,
        "hr_upscaler": hires.upscaler,
        "hr_second_pass_steps": hires.steps,
        # Always explicit: null reaches min(None, 0.999) in A1111 and fails the job.
        "denoising_strength": hires.denoising_strength,
        # No hr_sampler_name / hr_scheduler: null means "same as the first pass", while the
        # UI's "Use same sampler" string is a 500 through the API.
    }
    if backend == "forge":
        # Forge's hires pass uses hr_cfg (API default 1.0, which silently drops the negative
        # prompt), not cfg_scale; mirror the first pass.
        fields["hr_cfg"] = float(getattr(job, "cfg_scale", None) or 7.0)
        fields["hr_additional_modules"] = [FORGE_SAME_MODULES]
        distilled = getattr(job, "distilled_cfg_scale", None)
        if distilled is not None:
            fields["hr_distilled_cfg"] = float(distilled)
    return fields


def adetailer_args(unit: ADetailerUnit) -> dict[str, Any]:
    """One ADetailer tab. Keys must match ADetailerArgs exactly: a misspelled key makes
    ADetailer skip the whole unit with only a stderr line."""
    return {
        "ad_model": unit.model,
        "ad_prompt": unit.prompt,
        "ad_negative_prompt": unit.negative_prompt,
        "ad_confidence": unit.confidence,
        "ad_denoising_strength": unit.denoising_strength,
    }


def controlnet_args(unit: ControlNetUnit, *, save_detected_map: bool) -> dict[str, Any]:
    return {
        # The unit's API default is false (since May 2024): a unit without it is skipped.
        "enabled": True,
        "module": unit.module,
        "model": unit.model,
        # "image", not the legacy "input_image": Forge drops the legacy key silently.
        "image": unit.image,
        "weight": unit.weight,
        "guidance_start": unit.guidance_start,
        "guidance_end": unit.guidance_end,
        "control_mode": unit.control_mode,
        "resize_mode": unit.resize_mode,
        "pixel_perfect": unit.pixel_perfect,
        # Detect maps are appended to A1111's images; ask for them only when returned.
        "save_detected_map": save_detected_map,
    }


def compile_extensions(job: Any, backend: str) -> dict[str, Any]:
    """Payload fragment for the job's hires fix, ADetailer, ControlNet and Forge modules.

    Keys: ``enable_hr``/``hr_*``/``denoising_strength``, ``alwayson_scripts`` and (Forge
    modules) ``override_settings``; the caller merges ``override_settings`` key by key.
    """
    fragment: dict[str, Any] = {}
    hires = getattr(job, "hires", None)
    if hires is not None:
        fragment.update(_hires_fields(hires, job, backend))
    scripts: dict[str, Any] = {}
    units = adetailer_units(getattr(job, "adetailer", None))
    if units:
        # [enable, skip_img2img, tab dicts...]: the layout script-info reports (ext_get_script_info).
        scripts["ADetailer"] = {"args": [True, False, *(adetailer_args(u) for u in units)]}
    controlnet = getattr(job, "controlnet", None) or []
    if controlnet:
        save = bool(getattr(job, "return_control_maps", False))
        scripts["controlnet"] = {"args": [controlnet_args(u, save_detected_map=save) for u in controlnet]}
    if scripts:
        fragment["alwayson_scripts"] = scripts
    modules = getattr(job, "modules", None)
    if modules and backend == "forge":
        fragment["override_settings"] = {"forge_additional_modules": list(modules)}
    return fragment
