"""Contract check: a txt2img body against the request schema in the recorded /openapi.json.

A1111 (OpenAPI 3.0.2, pydantic v1) and Forge (OpenAPI 3.1.0, pydantic v2) both publish
``StableDiffusionProcessingTxt2Img``. Neither forbids unknown keys, and both drop them
silently, so besides the JSON-schema validation every top-level key must be a property
of the schema: a key A1111 does not know is a setting that silently did nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from a1111.openapi import validator_for
from tests.replay import recordings

TXT2IMG_PATH = "/sdapi/v1/txt2img"


@functools.cache
def openapi(backend: str) -> dict[str, Any]:
    """The recorded /openapi.json of ``a1111`` or ``forge``."""
    folder = "forge" if backend == "forge" else "a1111"
    return recordings(folder)["get_openapi_json"]["response"]["json"]


@functools.cache
def _validator(backend: str) -> tuple[Any, frozenset[str]]:
    doc = openapi(backend)
    body = doc["paths"][TXT2IMG_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"]
    validator = validator_for(doc, ref)  # the worker's own validator, so both read the schema alike
    target = doc
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return validator, frozenset(target.get("properties", {}))


def txt2img_problems(body: Any, backend: str = "a1111") -> list[str]:
    """Every way ``body`` breaks the recorded txt2img request schema ([] when it conforms)."""
    validator, properties = _validator(backend)
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
                for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))]
    if isinstance(body, dict):
        problems += [f"{key}: not a field of the {backend} txt2img schema (it would be dropped silently)"
                     for key in body if key not in properties]
    return problems


def assert_txt2img_conforms(body: Any, backend: str = "a1111") -> None:
    problems = txt2img_problems(body, backend)
    assert not problems, f"txt2img body breaks the recorded {backend} OpenAPI schema: {problems}"


# The other request bodies the worker sends, by route: img2img and the extras (upscale).
IMG2IMG_PATH = "/sdapi/v1/img2img"
EXTRAS_SINGLE_PATH = "/sdapi/v1/extra-single-image"
EXTRAS_BATCH_PATH = "/sdapi/v1/extra-batch-images"
GENERATION_PATHS = (TXT2IMG_PATH, IMG2IMG_PATH, EXTRAS_SINGLE_PATH, EXTRAS_BATCH_PATH)


@functools.cache
def _route_validator(route: str, backend: str) -> tuple[Any, frozenset[str]]:
    doc = openapi(backend)
    ref = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    target = doc
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return validator_for(doc, ref), frozenset(target.get("properties", {}))


def request_problems(body: Any, route: str, backend: str = "a1111") -> list[str]:
    """Every way ``body`` breaks the recorded request schema of ``route`` (one of
    GENERATION_PATHS), unknown top-level keys included ([] when it conforms)."""
    validator, properties = _route_validator(route, backend)
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
                for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))]
    if isinstance(body, dict):
        problems += [f"{key}: not a field of the {backend} {route} schema (it would be dropped silently)"
                     for key in body if key not in properties]
    return problems
