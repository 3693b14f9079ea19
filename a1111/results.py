"""Turn A1111's txt2img answer into the job output, and record per image what it was asked
to be (seed, size, label) for delivery.

A1111's base64 images are passed through untouched (no decode, no re-encode). Only the
generated images are returned: there are ``len(info.all_seeds)`` of them, starting at
``info.index_of_first_image``; ControlNet appends its detect maps after them, which are
returned only when the job asked for them. ``parameters`` is the body the worker sent, with
long strings (base64 control images) shortened; A1111's own echo is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from a1111.resolved import Resolved
from schemas.errors import A1111Error
from schemas.output import ImageFacts, Packaged

# Keys whose string values are images (ControlNet units, masks); the caller sent them, so
# they are not echoed back. Any other string this long is shortened too.
_IMAGE_KEYS = {"image", "mask", "image_b64", "input_image", "mask_image", "init_images", "firstpass_image",
               "imageList"}
_MAX_IMAGE_STRING = 128
_MAX_PARAM_STRING = 20_000


def utf8_safe(value: Any) -> Any:
    """``value`` with lone surrogates (what a JSON "\\ud800" escape decodes to) replaced by '?':
    RunPod sends the result as UTF-8, which cannot encode them, so the job would be lost."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [utf8_safe(v) for v in value]
    return value


def parse_info(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return utf8_safe(raw)
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            raise A1111Error("A1111's txt2img 'info' is not valid JSON") from None
        if isinstance(value, dict):
            return utf8_safe(value)
    raise A1111Error("A1111's txt2img answer has no 'info' object")


def shorten(value: Any, *, image: bool = False) -> Any:
    """A copy of ``value`` with base64 images (and any huge string) replaced by a short note."""
    if isinstance(value, str) and len(value) > (_MAX_IMAGE_STRING if image else _MAX_PARAM_STRING):
        return f"<{len(value)} characters omitted>"
    if isinstance(value, dict):
        return {k: shorten(v, image=image or k in _IMAGE_KEYS) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten(v, image=image) for v in value]
    return value


def _seeds(info: dict[str, Any]) -> list[int]:
    seeds = info.get("all_seeds")
    if isinstance(seeds, list):
        return [int(s) for s in seeds if isinstance(s, int | float)]
    seed = info.get("seed")
    return [int(seed)] if isinstance(seed, int) else []


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def asked_size(params: Mapping[str, Any]) -> tuple[int, int] | None:
    """The size A1111 was asked for by a txt2img payload, hires fix included (A1111 v1.10
    ``StableDiffusionProcessingTxt2Img.init``: hr_resize_x/y win over hr_scale; one of them
    alone keeps the aspect ratio). PURE."""
    width, height = _num(params.get("width")), _num(params.get("height"))
    if not width or not height:
        return None
    if not params.get("enable_hr"):
        return int(width), int(height)
    rx, ry = _num(params.get("hr_resize_x")) or 0, _num(params.get("hr_resize_y")) or 0
    if rx == 0 and ry == 0:
        scale = _num(params.get("hr_scale")) or 2.0  # A1111's default hr_scale
        return int(width * scale), int(height * scale)
    if rx == 0:
        return int(ry * width / height), int(ry)
    if ry == 0:
        return int(rx), int(rx * height / width)
    return int(rx), int(ry)


def image_facts(payload: Mapping[str, Any], seeds: Sequence[int], count: int) -> list[ImageFacts]:
    """Facts for the ``count`` images returned by one generation: the first ``len(seeds)``
    are the generated ones, asked the payload's size; what follows (ControlNet detect maps)
    was asked nothing. PURE."""
    size = asked_size(payload)
    return [ImageFacts(seeds[i], size) if i < len(seeds) else ImageFacts() for i in range(count)]


def package(response: dict[str, Any], payload: dict[str, Any], resolved: Resolved, *,
            return_control_maps: bool = False, timings: dict[str, float] | None = None,
            warnings: list[str] | None = None) -> Packaged:
    """The job output for one generation, with the facts of each image. PURE."""
    info = parse_info(response.get("info"))
    images = response.get("images") or []
    seeds = _seeds(info)
    first = info.get("index_of_first_image") if isinstance(info.get("index_of_first_image"), int) else 0
    generated = len(seeds) if seeds else len(images) - first
    out_images = images[first:] if return_control_maps else images[first:first + generated]
    if not out_images:  # a 200 without images is a failed generation, never an empty success
        raise A1111Error(f"A1111 answered txt2img without images ({len(images)} in its answer, "
                         f"{len(seeds)} seeds in its info)")
    out_images = [i if isinstance(i, str) and i.isascii() else utf8_safe(i) for i in out_images]
    notes = list(resolved.warnings) + list(warnings or [])
    ran = info.get("sd_model_name")
    if ran and resolved.checkpoint_name and str(ran).lower() != resolved.checkpoint_name.lower():
        notes.append(f"A1111 reports it ran checkpoint '{ran}', not the requested '{resolved.checkpoint}'")
    ran_sampler = info.get("sampler_name")
    if ran_sampler and ran_sampler != resolved.sampler:
        notes.append(f"A1111 reports sampler '{ran_sampler}', not the requested '{resolved.sampler}'")
    extra = info.get("extra_generation_params") if isinstance(info.get("extra_generation_params"), dict) else {}
    ran_schedule = extra.get("Schedule type")
    if ran_schedule and resolved.scheduler != "Automatic" and ran_schedule != resolved.scheduler:
        notes.append(f"A1111 reports schedule type '{ran_schedule}', not the requested '{resolved.scheduler}'")
    if len(images) - first < generated:
        notes.append(f"A1111 returned {len(images) - first} images for {generated} seeds")
    out: dict[str, Any] = {
        "images": out_images,
        "seeds": seeds,
        "info": info,
        "parameters": shorten(payload),
        "models": {
            "checkpoint": resolved.checkpoint,
            "loras": [{"name": lora.name, "weight": lora.weight} for lora in resolved.loras],
            "embeddings": list(resolved.embeddings),
        },
        "timings": dict(timings or {}),
        "warnings": notes,
    }
    if resolved.placed:
        out["models"]["placed"] = list(resolved.placed)
    return Packaged(out, image_facts(payload, seeds, len(out_images)))


def combine(steps: Sequence[tuple[str | None, Packaged]], extras: Sequence[tuple[str, str]] = ()) -> Packaged:
    """One output for a job's steps, then the (label, base64 PNG) images the worker drew
    after them (presets.finish). A single unlabelled step without extras is returned as
    is: a plain job's output has no ``labels``. PURE."""
    if len(steps) == 1 and steps[0][0] is None:
        if not extras:
            return steps[0][1]
        only = steps[0][1]
        out = {**only.result, "images": list(only.result["images"])}
        facts = [replace(fact, label="image") for fact in only.images]
    else:
        out, facts = _merge(steps)
    out["images"].extend(image for _, image in extras)
    facts.extend(ImageFacts(label=label) for label, _ in extras)
    out["labels"] = [fact.label for fact in facts]
    return Packaged(out, facts)


def _merge(steps: Sequence[tuple[str | None, Packaged]]) -> tuple[dict[str, Any], list[ImageFacts]]:
    """Images and seeds in step order; info and parameters keyed by step label; timings
    summed; the last step's models."""
    # "labels" is filled from the facts by combine; it is here so the output's keys keep their order.
    out: dict[str, Any] = {"images": [], "labels": [], "seeds": [], "info": {}, "parameters": {},
                           "models": {}, "timings": {}, "warnings": []}
    facts: list[ImageFacts] = []
    for i, (label, step) in enumerate(steps):
        key = label or f"step{i + 1}"
        result = step.result
        out["images"].extend(result["images"])
        facts.extend(replace(fact, label=key) for fact in step.images)
        out["seeds"].extend(result["seeds"])
        out["info"][key] = result["info"]
        out["parameters"][key] = result["parameters"]
        out["models"] = result["models"]
        for name, secs in result["timings"].items():
            out["timings"][name] = round(out["timings"].get(name, 0.0) + secs, 3)
        out["warnings"].extend(w for w in result["warnings"] if w not in out["warnings"])
    return out, facts


def package_extras(response: dict[str, Any], body: dict[str, Any], sizes: Sequence[tuple[int, int]],
                   upscalers: Mapping[str, str], *, timings: dict[str, float] | None = None) -> Packaged:
    """The job output of the upscale action (extra-single-image or extra-batch-images), each
    image with the size it was asked to become. PURE."""
    raw = response.get("images") if "imageList" in body else [response.get("image")]
    images = [i for i in (raw if isinstance(raw, list) else []) if isinstance(i, str) and i]
    if len(images) != len(sizes):
        raise A1111Error(f"A1111 answered the upscale with {len(images)} images for the {len(sizes)} sent")
    html = response.get("html_info")
    out: dict[str, Any] = {
        "images": images,
        "seeds": [],
        "info": {"html_info": utf8_safe(html) if isinstance(html, str) else None},
        "parameters": shorten(body),
        "models": {"upscalers": dict(upscalers)},
        "timings": dict(timings or {}),
        "warnings": [],
    }
    return Packaged(out, [ImageFacts(None, size) for size in sizes])
