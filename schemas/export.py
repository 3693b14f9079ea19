"""Write the JSON Schemas of a job (the RunPod envelope with its ``input``) and of a job's
result, generated from the pydantic models, for client authors.

    python -m schemas.export          # rewrite schemas/job.schema.json and schemas/output.schema.json
    python -m schemas.export --check  # exit 1 when the committed files are not current

The schemas describe the shapes; the worker checks more than a schema can say (names
against A1111's lists, model families, cross-field rules), and it accepts a few
conveniences the schema leaves out: the ``sampler`` alias of ``sampler_name`` and ``"jpg"``
for ``output.format``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.job import Job
from schemas.output import FORMAT_ALIASES, JOB_RESULTS, S3Config

HERE = Path(__file__).resolve().parent
JOB_SCHEMA = HERE / "job.schema.json"
OUTPUT_SCHEMA = HERE / "output.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def job_schema() -> dict[str, Any]:
    """The schema of what a client POSTs to /run or /runsync: ``{"input": {...}, "s3Config"?}``."""
    inner = Job.model_json_schema(ref_template="#/$defs/{model}")
    defs = inner.pop("$defs", {})
    if "LoraSpec" in defs:  # a bare string is shorthand for {"name": ...} (a before-validator)
        defs["LoraSpec"] = {"anyOf": [{"type": "string", "minLength": 1}, defs["LoraSpec"]],
                            "description": "a LoRA: its name, or {name | hf/civitai/url source, weight}"}
    fmt = defs.get("OutputOptions", {}).get("properties", {}).get("format", {})
    if "enum" in fmt:  # "jpg" is taken as jpeg (a before-validator the schema cannot show)
        fmt["enum"] = [*fmt["enum"], *FORMAT_ALIASES]
    defs["Job"] = inner
    defs["S3Config"] = S3Config.model_json_schema(ref_template="#/$defs/{model}")
    return {
        "$schema": DRAFT,
        "title": "A1111 / Forge worker job",
        "type": "object",
        "properties": {"input": {"$ref": "#/$defs/Job"}, "s3Config": {"$ref": "#/$defs/S3Config"}},
        "required": ["input"],
        "$defs": defs,
    }


def output_schema() -> dict[str, Any]:
    """The schema of a job's ``output``: an error, or the result of its action."""
    union = JOB_RESULTS[0]
    for model in JOB_RESULTS[1:]:
        union = union | model  # type: ignore[assignment]
    schema = TypeAdapter(union).json_schema(ref_template="#/$defs/{model}")
    return {"$schema": DRAFT, "title": "A1111 / Forge worker job output", **schema}


def rendered() -> dict[Path, str]:
    return {path: json.dumps(schema, indent=2, sort_keys=True) + "\n"
            for path, schema in ((JOB_SCHEMA, job_schema()), (OUTPUT_SCHEMA, output_schema()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write (or --check) schemas/*.schema.json")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is not current")
    args = parser.parse_args(argv)
    stale = [p for p, text in rendered().items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.name} is not current: run python -m schemas.export", file=sys.stderr)
        return 1 if stale else 0
    for p, text in rendered().items():
        p.write_text(text)
        print(f"wrote {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
