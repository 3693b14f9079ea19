"""Check the names a job gives the extensions against what the server lists, before generation.

The extensions fail silently (recordings ``ext_*``): a missing ADetailer model or an
unknown ControlNet model still gives 200 and a plain image, Forge drops unknown module
names, and only the server log says why. So every upscaler, detector, ControlNet model and
preprocessor, and Forge module name is looked up here first.
"""

from __future__ import annotations

from typing import Any

from a1111.matching import controlnet_model_listed, did_you_mean
from a1111.start_only import StartOnly, with_hint
from schemas.errors import A1111Unavailable, ModelNotFound, Problem, WorkerError
from schemas.extensions import ControlNetUnit, adetailer_units


def _problem(field: str, message: str, error_type: str = ModelNotFound.error_type) -> Problem:
    return Problem(field, message, error_type)


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


def _check_hires(job: Any, client: Any, start_only: StartOnly | None) -> list[Problem]:
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
    hint = start_only.hint("upscaler", hires.upscaler) if start_only else ""
    return [_problem("hires.upscaler", with_hint(
                     f"hires.upscaler {hires.upscaler!r} is not an upscaler this server lists "
                     f"(/sdapi/v1/upscalers, /sdapi/v1/latent-upscale-modes; upscaler files in the upscalers "
                     f"folder are read at start-up); {did_you_mean(hires.upscaler, names)}", hint))]


def _check_adetailer(job: Any, client: Any, start_only: StartOnly | None) -> list[Problem]:
    units = adetailer_units(getattr(job, "adetailer", None))
    if not units:
        return []
    body, why = _fetch(client, "/adetailer/v1/ad_model")
    if why is not None or not isinstance(body, dict):
        return [_problem("adetailer", f"adetailer needs the ADetailer extension, which this server does not "
                                      f"provide (GET /adetailer/v1/ad_model: {why})", "validation")]
    listed = [str(m) for m in body.get("ad_model", [])]
    return [
        _problem(f"adetailer[{i}].model", with_hint(
                 f"adetailer[{i}].model {u.model!r} is not a detector model ADetailer lists (models are read "
                 f"from the adetailer folder and Hugging Face at start-up); {did_you_mean(u.model, listed)}",
                 start_only.hint("adetailer", u.model) if start_only else ""))
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
                                 f"(/controlnet/model_list); {did_you_mean(u.model, models)}"))
    body, why = _fetch(client, "/controlnet/module_list")
    modules = [str(m) for m in body.get("module_list", [])] if isinstance(body, dict) else []
    for i, u in enumerate(units):
        if modules and u.module not in modules and u.module.lower() != "none":
            problems.append(_problem(f"controlnet[{i}].module",
                                     f"controlnet[{i}].module {u.module!r} is not a preprocessor this server lists "
                                     f"(/controlnet/module_list; 'none' uses the image as is); "
                                     f"{did_you_mean(u.module, modules)}", "validation"))
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
                 f"text_encoder folder and restart; {did_you_mean(m, listed)}")
        for i, m in enumerate(modules) if m.lower() not in lowered
    ]


def check_extension_names(job: Any, client: Any, backend: str, *, cache: Any = None,
                          start_only: StartOnly | None = None) -> list[Problem]:
    """Every problem with the job's upscaler, detector, ControlNet and module names.

    [] when all names are listed. With a
    ``cache`` (cache.ModelCache), catalog ControlNet models that are missing are placed
    first; with ``start_only``, an unlisted catalog upscaler or detector is told how to get it.
    Raises A1111Unavailable only when A1111 itself does not answer.
    """
    return (_check_hires(job, client, start_only) + _check_adetailer(job, client, start_only)
            + _check_controlnet(job, client, cache) + _check_modules(job, client, backend))
