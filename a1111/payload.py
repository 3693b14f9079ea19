"""Compile a validated job plus its resolved names into the /sdapi/v1/txt2img body. PURE.

Rules (the recordings named show why):
- Only what the job or the documented defaults set goes in: never sampler internals such
  as ``eta`` or ``s_noise`` (they turn "Euler a" into plain Euler).
- LoRAs become ``<lora:NAME:WEIGHT>`` tags appended to the prompt.
- ``override_settings`` always states the checkpoint (the exact title A1111 lists) and
  ``CLIP_stop_at_last_layers`` (default 1): A1111 does not restore an override of an option
  still at its default, so a clip skip of one job leaked into every later one
  (``txt2img_clip_skip_2``). With everything stated, ``override_settings_restore_afterwards``
  can be false, which saves a checkpoint reload per job (up to 17 s for SDXL).
- On A1111, ``sdxl_clip_l_skip`` is stated too (it leaks the same way,
  ``sdxl_get_options_after_clip_skip_overrides``).
- The ``a1111`` escape hatch takes only what a1111/hatch.py allows, and every option a job
  may set there is stated in every payload (the resolver's ``option_defaults`` where the job
  says nothing), for the same reason.
"""

from __future__ import annotations

from typing import Any

from a1111.extensions import compile_extensions
from a1111.hatch import JOB_OWNED, OVERRIDE_OWNED, WORKER_OWNED, hatch_problems
from a1111.resolved import Resolved
from schemas.errors import Problem, problems_error
from schemas.job import Job

# The owned-field tables live in a1111/hatch.py with the allow-list; named here as before.
__all__ = ["JOB_OWNED", "OVERRIDE_OWNED", "WORKER_OWNED", "compile_txt2img", "compile_warnings", "default_size",
           "lora_tags"]

DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_CLIP_SKIP = 1
LARGE_FAMILIES = {"sdxl", "sd3", "flux"}


def default_size(family: str | None) -> int:
    return 1024 if family in LARGE_FAMILIES else 512


def _weight(w: float) -> str:
    text = f"{w:.4f}".rstrip("0").rstrip(".")
    return text if text not in {"", "-0"} else "0"


def lora_tags(resolved: Resolved) -> str:
    return " ".join(f"<lora:{lora.name}:{_weight(lora.weight)}>" for lora in resolved.loras)


def compile_txt2img(job: Job, resolved: Resolved, backend: str) -> dict[str, Any]:
    """The txt2img body for one step. Raises ValidationFailed for fields this backend
    cannot honour and for escape-hatch fields that would override the job's own."""
    problems: list[Problem] = []
    prompt = job.prompt or ""
    tags = lora_tags(resolved)
    if tags:
        prompt = f"{prompt} {tags}" if prompt else tags
    clip_skip = job.clip_skip if job.clip_skip is not None else DEFAULT_CLIP_SKIP
    size = default_size(resolved.family)
    overrides: dict[str, Any] = {
        **resolved.option_defaults,
        "sd_model_checkpoint": resolved.checkpoint,
        "CLIP_stop_at_last_layers": clip_skip,
    }
    if backend != "forge":
        overrides["sdxl_clip_l_skip"] = clip_skip > 1
    payload: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": job.negative_prompt,
        "sampler_name": resolved.sampler,
        "scheduler": resolved.scheduler,
        "steps": job.steps if job.steps is not None else DEFAULT_STEPS,
        "cfg_scale": job.cfg_scale if job.cfg_scale is not None else DEFAULT_CFG,
        "width": job.width if job.width is not None else size,
        "height": job.height if job.height is not None else size,
        "seed": job.seed,
        "batch_size": job.batch_size,
        "n_iter": job.n_iter,
        "override_settings": overrides,
        "override_settings_restore_afterwards": False,
    }
    if job.distilled_cfg_scale is not None:
        if backend == "forge":
            payload["distilled_cfg_scale"] = job.distilled_cfg_scale
        else:
            problems.append(Problem("distilled_cfg_scale", "distilled_cfg_scale is a Forge field (Flux guidance); "
                                    "this worker runs A1111 (WEBUI_BACKEND=a1111), which would ignore it"))
    if job.modules and backend != "forge":
        problems.append(Problem("modules", "modules (VAE / text encoders) need the Forge backend "
                                           "(WEBUI_BACKEND=forge)"))
    _merge(payload, compile_extensions(job, backend))
    problems += _merge_escape_hatch(payload, job.a1111 or {}, resolved.a1111_names, backend)
    if problems:
        raise problems_error(problems)  # all bad input: a ValidationFailed
    return payload


def compile_warnings(job: Job, resolved: Resolved, backend: str) -> list[str]:
    """What the caller should know about how the payload will be applied. PURE."""
    warnings = []
    if (job.clip_skip or 1) > 1 and resolved.family == "sdxl" and backend != "forge":
        warnings.append(
            f"clip_skip {job.clip_skip} on SDXL: A1111 applies it with sdxl_clip_l_skip set (stated in every "
            "payload so it never leaks into later jobs); Forge skips layers in both SDXL text encoders, so the "
            "same job can differ between the two backends")
    return warnings


def _merge(payload: dict[str, Any], fragment: dict[str, Any]) -> None:
    for key, value in fragment.items():
        if key == "override_settings" and isinstance(value, dict):
            payload["override_settings"].update(value)
        elif key == "alwayson_scripts" and isinstance(value, dict):
            payload.setdefault("alwayson_scripts", {}).update(value)
        else:
            payload[key] = value


def _merge_escape_hatch(payload: dict[str, Any], extra: dict[str, Any], names: dict[str, str],
                        backend: str) -> list[Problem]:
    """Merge the allowed escape-hatch fields, names as A1111 lists them; the problems otherwise."""
    problems = hatch_problems(extra, backend)
    if problems:
        return problems
    for key, value in extra.items():
        if key == "override_settings":
            for opt, v in value.items():
                payload["override_settings"][opt] = names.get(f"override_settings.{opt}", v)
        else:
            payload[key] = names.get(key, value)
    return []
