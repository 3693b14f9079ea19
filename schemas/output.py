"""Output options of a job (its ``output`` field), the per-request bucket (RunPod's
top-level ``s3Config``), and the packaged result that a1111/results hands to output/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import Problem, problems_error

# Pillow's own default JPEG quality is 75 and A1111's is 80; 90 keeps fine texture while
# still cutting a 1024x1024 PNG to roughly a fifth.
DEFAULT_QUALITY = 90
# What people type for a format (file extensions, MIME-ish spellings) -> the format it means.
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["png", "jpeg", "webp"] = "png"
    # None: DEFAULT_QUALITY for jpeg/webp. PNG is lossless, so a quality with png is refused
    # rather than silently ignored.
    quality: int | None = Field(None, ge=1, le=100)
    upload: Literal["auto", "never", "always"] = "auto"

    @field_validator("format", mode="before")
    @classmethod
    def _format_alias(cls, value: Any) -> Any:
        # "jpg" is the extension everyone knows; it means jpeg, so it is taken as jpeg.
        if isinstance(value, str) and value.lower() in FORMAT_ALIASES:
            return FORMAT_ALIASES[value.lower()]
        if isinstance(value, str) and value.lower() in ("png", "jpeg", "webp"):
            return value.lower()
        return value

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


# --------------------------------------------------------------------------- the job's result
# What a job returns, as a model for client authors (schemas/output.schema.json, written by
# ``python -m schemas.export``). The handler builds its results as plain dicts; tests check that
# real ones conform. Objects allow extra keys: a client must ignore keys it does not know.
_OPEN = ConfigDict(extra="allow")
ERROR_TYPES = ("validation", "model_not_found", "download_failed", "catalog", "a1111_unavailable", "a1111_error",
               "out_of_memory", "timeout", "result_too_large", "upload_failed", "internal")


class UploadedImage(BaseModel):
    """An image uploaded to the bucket, in place of its base64."""

    model_config = _OPEN
    url: str = Field(description="presigned GET URL, valid 7 days")
    format: Literal["png", "jpeg", "webp"]
    width: int | None = None
    height: int | None = None
    seed: int | None = None


class Delivery(BaseModel):
    model_config = _OPEN
    format: Literal["png", "jpeg", "webp"]
    uploaded: bool
    inline_bytes: int = Field(description="the measured size of the result as RunPod sends it")


class GenerationResult(BaseModel):
    """A txt2img job's result (a preset's too: then with ``labels``, and ``info`` /
    ``parameters`` keyed by step label)."""

    model_config = _OPEN
    images: list[str | UploadedImage] = Field(description="base64 images, or uploads")
    labels: list[str | None] | None = Field(None, description="per image, for presets: preview, final, ...")
    seeds: list[int]
    info: dict[str, Any] = Field(description="A1111's info, parsed")
    parameters: dict[str, Any] = Field(description="the body sent to A1111, base64 images shortened")
    models: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str]
    delivery: Delivery


class ProblemDetail(BaseModel):
    model_config = _OPEN
    field: str
    message: str
    suggestions: list[str] | None = None
    allowed: Any = None


class ErrorResult(BaseModel):
    """A failed job: ``error`` is "<error_type>: <every problem>", at most 1000 characters."""

    model_config = _OPEN
    error: str = Field(max_length=1000)
    error_type: Literal[ERROR_TYPES]  # type: ignore[valid-type]
    details: list[ProblemDetail] | None = None
    refresh_worker: bool | None = Field(None, description="true only when the worker itself is broken")


class PlacedModelOut(BaseModel):
    model_config = _OPEN
    kind: str
    name: str
    path: str
    sha256: str | None
    bytes: int
    downloaded: bool


class PrefetchResult(BaseModel):
    model_config = _OPEN
    models: list[PlacedModelOut]
    a1111_refreshed: list[str]


class ListModelsResult(BaseModel):
    model_config = _OPEN
    checkpoints: list[dict[str, Any]]
    loras: list[dict[str, Any]]
    embeddings: list[dict[str, Any]]
    samplers: list[str | None]
    schedulers: list[str | None]
    catalog: list[dict[str, Any]]


class HealthResult(BaseModel):
    """``{"action": "health"}``: see docs/health.md for its fields."""

    model_config = _OPEN


JOB_RESULTS: tuple[type[BaseModel], ...] = (ErrorResult, GenerationResult, PrefetchResult, ListModelsResult,
                                            HealthResult)
