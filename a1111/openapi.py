"""Validate values against the schemas of an A1111 / Forge /openapi.json document. PURE.

A1111 (OpenAPI 3.0, pydantic v1) writes draft-4 schemas, where 0.0 is not an "integer";
Forge (OpenAPI 3.1, pydantic v2) writes JSON Schema 2020-12. Neither server rejects an
escape-hatch field of the wrong type before generating, so the job is checked here, after
a1111/hatch.py has allowed its keys and bounded its values.
"""

from __future__ import annotations

from typing import Any

from a1111.matching import did_you_mean
from schemas.errors import Problem

TXT2IMG_SCHEMA = "StableDiffusionProcessingTxt2Img"
OPTIONS_SCHEMA = "Options"
_URI = "urn:a1111-openapi"


def validator_for(doc: dict[str, Any], pointer: str) -> Any:
    """A jsonschema validator for the schema at ``pointer`` ("#/components/...") of ``doc``.

    It validates through a $ref into the whole document, so every "#/components/..."
    reference inside that schema resolves.
    """
    # Imported here: only jobs with escape-hatch fields (and the tests) need jsonschema.
    from jsonschema import Draft4Validator, Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4, DRAFT202012

    modern = str(doc.get("openapi", "")).startswith("3.1")
    spec, cls = (DRAFT202012, Draft202012Validator) if modern else (DRAFT4, Draft4Validator)
    registry = Registry().with_resource(_URI, Resource(contents=doc, specification=spec))
    return cls({"$ref": _URI + pointer}, registry=registry)


def txt2img_properties(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The txt2img request's properties, or None when the document has no such schema."""
    schema = (doc.get("components") or {}).get("schemas", {}).get(TXT2IMG_SCHEMA)
    return (schema.get("properties") or {}) if isinstance(schema, dict) else None


def options_properties(doc: dict[str, Any]) -> dict[str, Any]:
    """The options this server has (the properties of its ``Options`` schema)."""
    schema = (doc.get("components") or {}).get("schemas", {}).get(OPTIONS_SCHEMA)
    return (schema.get("properties") or {}) if isinstance(schema, dict) else {}


def a1111_field_problems(extra: dict[str, Any], doc: dict[str, Any]) -> list[Problem]:
    """What is wrong with the job's ``a1111`` escape-hatch fields, by the server's own schema:
    the types of its txt2img fields, and whether it has each option named."""
    props = txt2img_properties(doc)
    if props is None:
        return [Problem("a1111", "A1111's /openapi.json has no txt2img schema; the a1111 fields cannot be checked")]
    problems = []
    for key, value in extra.items():
        fld = f"a1111.{key}"
        if key not in props:
            problems.append(Problem(fld, f"'{key[:60]}' is not an A1111 txt2img field; "
                                         f"{did_you_mean(key, sorted(props))}"))
            continue
        validator = validator_for(doc, f"#/components/schemas/{TXT2IMG_SCHEMA}/properties/{key}")
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            problems.append(Problem(fld, f"a1111.{key}: {errors[0].message[:200]}"))
        elif key == "override_settings" and isinstance(value, dict):
            options = options_properties(doc)
            problems += [Problem(f"{fld}.{opt}", f"{fld}.{opt} is not an option of this server")
                         for opt in value if opt not in options]
    return problems
