"""Hires fix, ADetailer, ControlNet and Forge modules: name checks and payload fragments.

The extensions fail silently (recordings ``ext_*``): a missing ADetailer model or an
unknown ControlNet model still gives 200 and a plain image, Forge drops unknown module
names, and only the server log says why. So every name is checked against the live lists
*before* generation (``check_extension_names``), and the payload fragment is built by a
pure function (``compile_extensions``) that avoids the traps listed in a1111-api.md.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from schemas.errors import A1111Unavailable, ModelNotFound, Problem, WorkerError
from schemas.extensions import ADetailerUnit, ControlNetUnit, HiresSpec, adetailer_units

log = logging.getLogger(__name__)

# Forge keeps the first pass's VAE / text encoders for the hires pass only when told so;
# its default (null) crashes the hires pass with a TypeError (recording
# forge/txt2img_hires_latent_no_hr_modules).
FORGE_SAME_MODULES = "Use same choices"


# --------------------------------------------------------------------------- compile (pure)
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


# --------------------------------------------------------------------------- names (I/O)
def _problem(field: str, message: str, error_type: str = ModelNotFound.error_type) -> Problem:
    return Problem(field, message, error_type)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
    shown = ", ".join(close) if close else ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
    return f"did you mean: {shown}" if close else f"available: {shown or 'none'}"


def _fetch(client: Any, path: str, **params: Any) -> tuple[Any, str | None]:
    """(json, None) or (None, reason) when the route is missing or failing.

    A1111 being down is not a name problem: that error propagates.
    """
    try:
        return client.get(path, **params), None
    except A1111Unavailable:
        raise
    except WorkerError as exc:
        return None, exc.message


def _controlnet_models(client: Any, *, update: bool = False) -> tuple[list[str] | None, str | None]:
    body, why = _fetch(client, "/controlnet/model_list", **({"update": "true"} if update else {}))
    if why is not None or not isinstance(body, dict):
        return None, why or "unexpected answer"
    return [str(m) for m in body.get("model_list", [])], None


def controlnet_model_listed(name: str, listed: list[str]) -> bool:
    """ControlNet resolves a model by its exact "stem [hash]" title or by the stem,
    case-insensitively (ext_txt2img_controlnet_model_by_short_name)."""
    want = name.strip().lower()
    for title in listed:
        t = title.lower()
        if t == want or t.split(" [", 1)[0] == want or t.split(" [", 1)[0] == want.rsplit(".", 1)[0]:
            return True
    return False


def _check_hires(job: Any, client: Any) -> list[Problem]:
    hires = getattr(job, "hires", None)
    if hires is None:
        return []
    names: list[str] = []
    for path in ("/sdapi/v1/upscalers", "/sdapi/v1/latent-upscale-modes"):
        body, why = _fetch(client, path)
        if why is None and isinstance(body, list):
            names += [str(e.get("name")) for e in body if isinstance(e, dict)]
    if hires.upscaler in names:
        return []
    return [_problem("hires.upscaler",
                     f"hires.upscaler {hires.upscaler!r} is not an upscaler this server lists "
                     f"(/sdapi/v1/upscalers, /sdapi/v1/latent-upscale-modes; upscaler files in the upscalers "
                     f"folder are read at start-up); {_suggest(hires.upscaler, names)}")]


def _check_adetailer(job: Any, client: Any) -> list[Problem]:
    units = adetailer_units(getattr(job, "adetailer", None))
    if not units:
        return []
    body, why = _fetch(client, "/adetailer/v1/ad_model")
    if why is not None or not isinstance(body, dict):
        return [_problem("adetailer", f"adetailer needs the ADetailer extension, which this server does not "
                                      f"provide (GET /adetailer/v1/ad_model: {why})", "validation")]
    listed = [str(m) for m in body.get("ad_model", [])]
    return [
        _problem(f"adetailer[{i}].model",
                 f"adetailer[{i}].model {u.model!r} is not a detector model ADetailer lists (models are read "
                 f"from the adetailer folder and Hugging Face at start-up); {_suggest(u.model, listed)}")
        for i, u in enumerate(units) if u.model not in listed
    ]


def _check_controlnet(job: Any, client: Any, cache: Any) -> list[Problem]:
    units = getattr(job, "controlnet", None) or []
    if not units:
        return []
    models, why = _controlnet_models(client)
    if models is None:
        return [_problem("controlnet", f"controlnet needs the ControlNet extension, which this server does not "
                                       f"provide (GET /controlnet/model_list: {why})", "validation")]
    problems = []
    missing = [(i, u) for i, u in enumerate(units) if not controlnet_model_listed(u.model, models)]
    if missing and cache is not None:
        missing = _place_controlnet_models(missing, cache, problems)
        models = _controlnet_models(client, update=True)[0] or models
        missing = [(i, u) for i, u in missing if not controlnet_model_listed(u.model, models)]
    for i, u in missing:
        problems.append(_problem(f"controlnet[{i}].model",
                                 f"controlnet[{i}].model {u.model!r} is not a ControlNet model this server lists "
                                 f"(/controlnet/model_list); {_suggest(u.model, models)}"))
    body, why = _fetch(client, "/controlnet/module_list")
    modules = [str(m) for m in body.get("module_list", [])] if isinstance(body, dict) else []
    for i, u in enumerate(units):
        if modules and u.module not in modules and u.module.lower() != "none":
            problems.append(_problem(f"controlnet[{i}].module",
                                     f"controlnet[{i}].module {u.module!r} is not a preprocessor this server lists "
                                     f"(/controlnet/module_list; 'none' uses the image as is); "
                                     f"{_suggest(u.module, modules)}", "validation"))
    return problems


def _place_controlnet_models(missing: list[tuple[int, ControlNetUnit]], cache: Any,
                             problems: list[Problem]) -> list[tuple[int, ControlNetUnit]]:
    """Let the cache place catalog ControlNet models A1111 does not list yet; ControlNet
    rescans its folders on ``model_list?update=true``."""
    still = []
    for i, u in missing:
        try:
            cache.ensure("controlnet", u.model)
        except WorkerError as exc:
            if exc.error_type != "model_not_found":
                problems.append(_problem(f"controlnet[{i}].model", f"controlnet[{i}].model {u.model!r} is not "
                                         f"installed and could not be placed: {exc.message}", exc.error_type))
                continue
        still.append((i, u))
    return still


def _check_modules(job: Any, client: Any, backend: str) -> list[Problem]:
    modules = getattr(job, "modules", None) or []
    if not modules:
        return []
    if backend != "forge":
        return [_problem("modules", "modules (VAE / text encoder files) are a Forge feature; "
                                    "this worker runs A1111 (WEBUI_BACKEND=a1111)", "validation")]
    body, why = _fetch(client, "/sdapi/v1/sd-modules")
    if why is not None or not isinstance(body, list):
        return [_problem("modules", f"could not read Forge's module list (GET /sdapi/v1/sd-modules: {why})",
                         "a1111_error")]
    listed = [str(e.get("model_name")) for e in body if isinstance(e, dict)]
    lowered = {n.lower() for n in listed} | {n.lower().rsplit(".", 1)[0] for n in listed}
    return [
        _problem(f"modules[{i}]",
                 f"modules[{i}] {m!r} is not a module Forge lists (/sdapi/v1/sd-modules); Forge silently drops "
                 f"unknown names and builds this list only at start-up, so put the file in the VAE or "
                 f"text_encoder folder and restart; {_suggest(m, listed)}")
        for i, m in enumerate(modules) if m.lower() not in lowered
    ]


def check_extension_names(job: Any, client: Any, backend: str, *, cache: Any = None) -> list[Problem]:
    """Every problem with the job's upscaler, detector, ControlNet and module names.

    [] when all names are listed. With a
    ``cache`` (cache.ModelCache), catalog ControlNet models that are missing are placed
    first. Raises A1111Unavailable only when A1111 itself does not answer.
    """
    return (_check_hires(job, client) + _check_adetailer(job, client)
            + _check_controlnet(job, client, cache) + _check_modules(job, client, backend))
