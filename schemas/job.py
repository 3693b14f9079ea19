"""Job input: the pydantic model of a job's ``input`` and ``parse_job``.

A1111 accepts almost anything and silently drops or coerces what it does not like (an
unknown field, ``"20"`` for 20, 1.5 truncated to 1, width 70). So the worker is strict:
unknown fields are rejected, types are not coerced, ranges are checked, and every problem
of a job is reported at once in one ``ValidationFailed`` whose ``details`` list names each
field and what it allows.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import Problem, problems_error
from schemas.extensions import ADetailerField, ControlNetUnits, HiresSpec, adetailer_units
from schemas.images import IMAGE_ALLOWED, IMAGE_DATA_FIELDS, ImageFields, image_problems
from schemas.messages import clean_loc, described, got, loc_text
from schemas.output import OutputOptions
from schemas.presets import Angle, Quality, RubberTileColors, preset_problems
from schemas.refs import (
    CivitaiSource,
    HFSource,
    LoraSpec,
    ModelRef,
    Source,
    UrlSource,
    check_https,
    check_name,
    ref_value,
)

__all__ = ["CivitaiSource", "HFSource", "Job", "LoraSpec", "ModelRef", "Source", "UrlSource", "parse_job",
           "ref_value"]

ACTIONS = ("txt2img", "health", "list_models", "prefetch", "upscale")
MAX_LORAS = 16
MAX_EMBEDDINGS = 16
MAX_PROMPT = 10_000
SEED_MAX = 2**32 - 1

# What each field allows, in the words the error messages use.
ALLOWED: dict[str, str] = {
    "prompt": f"a string of at most {MAX_PROMPT} characters (empty is allowed, as in A1111)",
    "negative_prompt": f"a string of at most {MAX_PROMPT} characters",
    "checkpoint": "a model reference (catalog id, file name on the volume, or {hf|civitai|url} source)",
    "loras": f"a list of at most {MAX_LORAS} entries {{name | hf/civitai/url source, weight -5..5}}",
    "lora_urls": f"a list of at most {MAX_LORAS} https URLs",
    "lora_scales": "a list of numbers from -5 to 5, one per lora_urls entry",
    "embeddings": f"a list of at most {MAX_EMBEDDINGS} model references",
    "sampler_name": "an A1111 sampler name such as 'DPM++ 2M', 'Euler a' or a legacy 'DPM++ 2M Karras'",
    "scheduler": "an A1111 scheduler name such as 'Automatic', 'Karras', 'Exponential'",
    "steps": "an integer from 1 to 150",
    "cfg_scale": "a number from 1 to 30",
    "distilled_cfg_scale": "a number from 0 to 30 (Forge only)",
    "width": "an integer from 64 to 2048, a multiple of 8",
    "height": "an integer from 64 to 2048, a multiple of 8",
    "seed": f"an integer from -1 (random) to {SEED_MAX}",
    "batch_size": "an integer from 1 to 8",
    "n_iter": "an integer from 1 to 8",
    "clip_skip": "an integer from 1 to 12",
    "return_control_maps": "true or false",
    "preset": "a preset name such as 'rubber_tile' or 'flux'",
    "modules": "a list of Forge VAE / text-encoder module names (Forge only)",
    "a1111": "an object of extra A1111 txt2img fields",
    "action": "one of " + ", ".join(ACTIONS),
    "checkpoints": "a list of model references",
    "catalog": "true or false",
    **IMAGE_ALLOWED,
}
# Names people bring from other tools; the suggestion for an unknown field.
SYNONYMS = {
    "guidance_scale": "cfg_scale", "guidance": "cfg_scale", "cfg": "cfg_scale",
    "num_inference_steps": "steps", "num_steps": "steps", "sampler_index": "sampler_name",
    "negative": "negative_prompt", "neg_prompt": "negative_prompt", "model": "checkpoint",
    "sd_model_checkpoint": "checkpoint", "model_name": "checkpoint", "lora": "loras",
    "num_images": "batch_size", "num_outputs": "batch_size", "batch_count": "n_iter",
    "clip_stop_at_last_layers": "clip_skip", "enable_hr": "hires", "hr": "hires", "schedule_type": "scheduler",
}
# Fields only some actions use.
PREFETCH_FIELDS = {"checkpoints", "loras", "embeddings", "catalog"}
TXT2IMG_ONLY = {"checkpoints", "catalog"}


# --------------------------------------------------------------------------- the job
def _multiple_of_8(v: int | None) -> int | None:
    if v is not None and v % 8:
        raise ValueError(f"must be a multiple of 8 from 64 to 2048, got {v} "
                         f"(A1111 would silently render {v - v % 8} pixels)")
    return v


# A1111 reads every "<word:...>" of a prompt as an extra network (its regex): <lora:...>,
# <lyco:...>, <hypernet:...>. Typed in a prompt it would skip the LoRA name check, the weight
# range and the LoRA cap, so such tags are refused and LoRAs go through ``loras``.
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


def extra_network_problem(text: str) -> str | None:
    """Why ``text`` may not go into a prompt as it is, or None."""
    found = EXTRA_NETWORK_TAG.search(text)
    if found is None:
        return None
    tag = found.group(0)
    shown = tag if len(tag) <= 60 else tag[:57] + "..."
    return (f"must not contain A1111 extra-network tags such as {shown!r}: put LoRAs in 'loras' "
            "({name, weight -5..5}), where their names, weights and number are checked; hypernetworks "
            "are not supported")


def _no_tags(v: str | None) -> str | None:
    why = extra_network_problem(v) if v is not None else None
    if why:
        raise ValueError(why)
    return v


def _https_list(v: list[str]) -> list[str]:
    for url in v:
        check_https(url)
    return v


MAX_A1111_DEPTH = 32


def _plain_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    # The escape hatch is sent to A1111 as JSON: NaN/Infinity are not JSON and a lone surrogate
    # is not UTF-8 (requests refuses to send either), and absurd nesting only exhausts the
    # recursion of the schema check.
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must hold JSON values only: {v!r} is not a JSON number")
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must hold valid Unicode text: a lone surrogate is not UTF-8") from None
        if isinstance(v, dict | list):
            if depth > MAX_A1111_DEPTH:
                raise ValueError(f"must not be nested deeper than {MAX_A1111_DEPTH} levels")
            items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)
    return value


Size = Annotated[int | None, Field(None, ge=64, le=2048), AfterValidator(_multiple_of_8)]
Weight = Annotated[float, Field(ge=-5.0, le=5.0, allow_inf_nan=False)]


class Job(ImageFields, BaseModel):
    """One job's input; defaults that depend on the checkpoint or a preset stay None here and
    are applied by the payload compiler, so a preset can tell what the caller set."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    action: Literal["txt2img", "health", "list_models", "prefetch", "upscale"] = "txt2img"
    prompt: Annotated[str | None, AfterValidator(_no_tags)] = Field(
        None, max_length=MAX_PROMPT)
    negative_prompt: Annotated[str, AfterValidator(_no_tags)] = Field("", max_length=MAX_PROMPT)
    checkpoint: ModelRef | None = None
    loras: list[LoraSpec] = Field(default_factory=list, max_length=MAX_LORAS)
    lora_urls: Annotated[list[str], AfterValidator(_https_list)] = Field(default_factory=list, max_length=MAX_LORAS)
    lora_scales: list[Weight] | None = Field(None, max_length=MAX_LORAS)
    embeddings: list[ModelRef] = Field(default_factory=list, max_length=MAX_EMBEDDINGS)
    sampler_name: str | None = Field(None, min_length=1, max_length=100)
    scheduler: str | None = Field(None, min_length=1, max_length=100)
    steps: int | None = Field(None, ge=1, le=150)
    cfg_scale: float | None = Field(None, ge=1.0, le=30.0, allow_inf_nan=False)
    distilled_cfg_scale: float | None = Field(None, ge=0.0, le=30.0, allow_inf_nan=False)
    width: Size = None
    height: Size = None
    seed: int = Field(-1, ge=-1, le=SEED_MAX)
    batch_size: int = Field(1, ge=1, le=8)
    n_iter: int = Field(1, ge=1, le=8)
    clip_skip: int | None = Field(None, ge=1, le=12)
    hires: HiresSpec | None = None
    adetailer: ADetailerField | None = None
    controlnet: ControlNetUnits | None = None
    return_control_maps: bool = False
    preset: str | None = Field(None, min_length=1, max_length=64)
    colors: RubberTileColors | None = None
    angle: Angle | None = None
    quality: Quality | None = None
    # Forge's VAE / text-encoder files (override_settings.forge_additional_modules); set by
    # the flux preset, or by a caller who loads a UNet-only checkpoint.
    modules: list[Annotated[str, AfterValidator(check_name)]] | None = Field(None, max_length=8)
    output: OutputOptions | None = None
    a1111: Annotated[dict[str, Any] | None, AfterValidator(_plain_json)] = None
    # prefetch
    checkpoints: list[ModelRef] = Field(default_factory=list, max_length=64)
    catalog: bool = False

    @model_validator(mode="before")
    @classmethod
    def _sampler_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sampler" in data:
            if "sampler_name" in data:
                raise ValueError("give either 'sampler_name' or its alias 'sampler', not both")
            data = dict(data)
            data["sampler_name"] = data.pop("sampler")
        return data

    def lora_refs(self) -> list[tuple[str | Source, float | None, str]]:
        """(reference, weight or None, field path) for ``loras`` and the ``lora_urls`` shorthand."""
        out: list[tuple[str | Source, float | None, str]] = [
            (spec.ref(), spec.weight, f"loras[{i}]") for i, spec in enumerate(self.loras)
        ]
        scales = self.lora_scales or []
        for i, url in enumerate(self.lora_urls):
            weight = scales[i] if i < len(scales) else 1.0
            out.append((UrlSource(url=url), weight, f"lora_urls[{i}]"))
        return out


# --------------------------------------------------------------------------- problems
def _problem_from(err: dict[str, Any], known_fields: list[str]) -> Problem:
    loc = clean_loc(tuple(err.get("loc", ())))
    field = loc_text(loc) or "input"
    etype = err.get("type", "")
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    top = str(loc[0]) if loc else ""
    if etype == "extra_forbidden":
        name = str(loc[-1]) if loc else field
        if len(loc) != 1:
            return Problem(field, f"unknown field {got(name)} in {loc_text(loc[:-1])}")
        close = difflib.get_close_matches(name, known_fields, 1, 0.7)
        guess = SYNONYMS.get(name.lower()) or (close[0] if close else None)
        hint = f"; did you mean '{guess}'?" if guess else "; see the input fields in the README"
        return Problem(field, f"unknown field {got(name)}{hint}", hints={"suggestion": guess} if guess else {})
    show = described if top in IMAGE_DATA_FIELDS else got
    shown = f", got {show(err['input'])}" if "input" in err and etype not in {"missing"} else ""
    if len(loc) == 1 and top in ALLOWED and etype not in {"value_error", "missing"}:
        return Problem(field, f"{field} must be {ALLOWED[top]}{shown}", hints={"allowed": ALLOWED[top]})
    if etype == "missing":
        return Problem(field, f"{field} is required")
    joiner = " " if msg.startswith("must") else ": "
    return Problem(field, f"{field}{joiner}{msg}{shown if etype != 'value_error' else ''}")


def _problems(exc: ValidationError) -> list[Problem]:
    known = sorted(Job.model_fields)
    seen: set[tuple[str, str]] = set()
    out = []
    for err in exc.errors(include_url=False):
        p = _problem_from(err, known)
        if (p.field, p.message) not in seen:
            seen.add((p.field, p.message))
            out.append(p)
    return out


def _action_problems(job: Job) -> list[Problem]:
    given = job.model_fields_set - {"action"}
    problems: list[Problem] = []
    if job.action in {"health", "list_models"}:
        for name in sorted(given):
            problems.append(Problem(name, f"action '{job.action}' takes no other fields; remove '{name}'"))
    elif job.action == "prefetch":
        for name in sorted(given - PREFETCH_FIELDS):
            problems.append(Problem(name, f"action 'prefetch' takes only {', '.join(sorted(PREFETCH_FIELDS))}; "
                                          f"remove '{name}'"))
        if job.loras and any(spec.weight is not None for spec in job.loras):
            problems.append(Problem("loras", "prefetch places LoRAs only; remove 'weight'"))
        if not (given & PREFETCH_FIELDS):
            problems.append(Problem("action", "action 'prefetch' needs at least one of checkpoints, loras, "
                                              "embeddings or catalog: true"))
    elif job.action == "upscale":
        problems.extend(image_problems(job))
    else:
        for name in sorted(given & TXT2IMG_ONLY):
            problems.append(Problem(name, f"'{name}' is only used with action 'prefetch'"))
        if job.prompt is None and job.preset is None:
            problems.append(Problem("prompt", f"prompt is required: {ALLOWED['prompt']}"))
        problems.extend(preset_problems(job))
        problems.extend(_adetailer_tag_problems(job))
        problems.extend(image_problems(job))
    return problems


def _adetailer_tag_problems(job: Job) -> list[Problem]:
    problems = []
    for i, unit in enumerate(adetailer_units(job.adetailer)):
        for name in ("prompt", "negative_prompt"):
            why = extra_network_problem(getattr(unit, name))
            if why:
                problems.append(Problem(f"adetailer[{i}].{name}", f"adetailer[{i}].{name} {why}"))
    return problems


# Checks the names a job gives (a1111/precheck.py): parse_job calls it when the job has
# other problems, so that both come back in one round.
NameCheck = Callable[[Job], list[Problem]]


def _valid_part(raw: dict[str, Any], exc: ValidationError) -> Job | None:
    """The job without the top-level fields that failed, when that much validates."""
    errors = exc.errors(include_url=False)
    if any(not e.get("loc") for e in errors):
        return None
    bad = {str(e["loc"][0]) for e in errors}
    if "sampler_name" in bad:  # the alias was renamed before validation
        bad.add("sampler")
    try:
        return Job.model_validate({k: v for k, v in raw.items() if k not in bad})
    except ValidationError:
        return None


def parse_job(raw: Any, names: NameCheck | None = None) -> Job:
    """Validate a job's ``input``; raise ValidationFailed listing every problem, with the
    problems ``names`` finds in the names of the fields that are valid."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise problems_error([Problem("input", "must be a JSON object")],
                             message=f"'input' must be a JSON object, got {type(raw).__name__}")
    early: list[Problem] = []
    if "sampler" in raw and "sampler_name" in raw:
        early.append(Problem("sampler_name", "give either 'sampler_name' or its alias 'sampler', not both"))
        raw = {k: v for k, v in raw.items() if k != "sampler"}
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        part = _valid_part(raw, exc) if names is not None else None
        raise problems_error(early + _problems(exc) + (names(part) if names and part else [])) from None
    problems = early + _action_problems(job)
    if problems:
        raise problems_error(problems + (names(job) if names else []))
    return job
