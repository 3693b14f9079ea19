"""Output options of a job (its ``output`` field), the per-request bucket (RunPod's
top-level ``s3Config``), and the packaged result that a1111/results hands to output/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import Problem, problems_error

# Pillow's own default JPEG quality is 75 and A1111's is 80; 90 keeps fine texture while
# still cutting a 1024x1024 PNG to roughly a fifth.
DEFAULT_QUALITY = 90


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["png", "jpeg", "webp"] = "png"
    # None: DEFAULT_QUALITY for jpeg/webp. PNG is lossless, so a quality with png is refused
    # rather than silently ignored.
    quality: int | None = Field(None, ge=1, le=100)
    upload: Literal["auto", "never", "always"] = "auto"

    @model_validator(mode="after")
    def _quality_needs_lossy_format(self) -> OutputOptions:
        if self.quality is not None and self.format == "png":
            raise ValueError("'quality' applies only to format 'jpeg' or 'webp' (png is lossless)")
        return self

    def effective_quality(self) -> int:
        return self.quality if self.quality is not None else DEFAULT_QUALITY


class S3Config(BaseModel):
    """RunPod's per-request bucket, given at the job's top level beside ``input``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    endpointUrl: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    accessId: str = Field(min_length=1, max_length=512)
    accessSecret: str = Field(min_length=1, max_length=4096)
    bucketName: str | None = Field(None, min_length=3, max_length=255)


_S3_FIELDS = "endpointUrl (http(s) URL), accessId, accessSecret (strings) and optional bucketName"


def parse_s3_config(raw: object) -> S3Config | None:
    """The job's ``s3Config`` or None; a bad one is a ValidationFailed that never echoes
    the values given (they are credentials)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise problems_error([Problem("s3Config", "must be a JSON object")],
                             message=f"s3Config must be an object with {_S3_FIELDS}")
    try:
        return S3Config.model_validate(raw)
    except ValidationError as exc:
        # Only field names and pydantic's error kinds: err["input"] may be a secret.
        problems: list[Problem] = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = ".".join(str(p) for p in err.get("loc", ()))
            field = f"s3Config.{loc}" if loc else "s3Config"
            if err.get("type") == "extra_forbidden":
                message = f"unknown field '{loc}' in s3Config; allowed: {_S3_FIELDS}"
            elif err.get("type") == "missing":
                message = f"{field} is required"
            elif err.get("type") == "string_pattern_mismatch":
                message = f"{field} must start with http:// or https://"
            else:
                message = f"{field} is invalid ({err.get('type')})"
            problems.append(Problem(field, message))
        raise problems_error(problems, message=f"invalid s3Config: {problems[0].message}") from None


@dataclass(frozen=True)
class ImageFacts:
    """What one returned image was asked to be, recorded when it was packaged: delivery
    checks sizes and names seeds from these instead of reading the job output back. None
    where nothing was asked (ControlNet detect maps, a preset's drawn extras)."""

    seed: int | None = None
    size: tuple[int, int] | None = None  # (width, height), hires fix included
    label: str | None = None  # the preset step or extra it belongs to; None for a plain job


@dataclass(frozen=True)
class Packaged:
    """A job output as the caller will see it (``result``) and, kept out of it, one
    ImageFacts per ``result["images"]`` entry, in the same order."""

    result: dict[str, Any]
    images: list[ImageFacts]
