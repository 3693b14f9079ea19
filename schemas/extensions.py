"""Job input models for hires fix, ADetailer and ControlNet.

These are the caller-facing shapes; ``a1111/extensions.py`` turns them into A1111's own
field names. Names of upscalers, detector models and ControlNet models cannot be checked
here (they depend on what the running A1111 lists); ranges, enums and shapes can.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# A1111 never checks an image's size before decoding it; keep a bound so one bad job
# cannot take the worker's memory (RunPod limits /run inputs to 10 MB anyway).
MAX_CONTROL_IMAGE_BYTES = 20 * 1024 * 1024
# ADetailer's default ``ad_max_models`` is 4 tabs; ControlNet's ``control_net_unit_count`` 3.
MAX_ADETAILER_UNITS = 4
MAX_CONTROLNET_UNITS = 3


def _not_none(why: str) -> AfterValidator:
    """Refuse the name "None": A1111 and its extensions read it as "no model" and skip the unit
    without a word."""

    def check(value: str) -> str:
        if value.strip().lower() == "none":
            raise ValueError(why)
        return value

    return AfterValidator(check)


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelled key here would otherwise reach an extension
    # that drops it silently (ADetailer even disables the whole unit).
    model_config = ConfigDict(extra="forbid", frozen=True)


class HiresSpec(_Strict):
    """``hires`` -> ``enable_hr`` + ``hr_*`` fields and an explicit ``denoising_strength``."""

    scale: float = Field(2.0, ge=1.0, le=4.0, description="upscale factor of the second pass")
    upscaler: str = Field("Latent", min_length=1, max_length=200,
                          description="a name from /sdapi/v1/upscalers or /sdapi/v1/latent-upscale-modes")
    steps: int = Field(0, ge=0, le=150, description="second-pass steps; 0 = same as the first pass")
    # A1111's API default for hires denoising_strength is null, and the hires pass fails on
    # it, so the worker always sends a value.
    denoising_strength: float = Field(0.5, ge=0.0, le=1.0)


class ADetailerUnit(_Strict):
    """One ADetailer tab; compiled to an ``ad_*`` dict checked against /adetailer/v1/schema."""

    model: Annotated[str, _not_none("model 'None' disables the unit; leave the unit out instead")] = Field(
        min_length=1, max_length=200, description="a name from /adetailer/v1/ad_model")
    prompt: str = Field("", max_length=10000, description="empty = the main prompt")
    negative_prompt: str = Field("", max_length=10000)
    confidence: float = Field(0.3, ge=0.0, le=1.0)
    denoising_strength: float = Field(0.4, ge=0.0, le=1.0)



def _decode_base64_image(value: str) -> str:
    """Strip a ``data:`` prefix, check the base64 decodes to an image Pillow can read."""
    from PIL import Image, UnidentifiedImageError  # local: schemas stay cheap to import

    raw = value.strip()
    if raw.startswith("data:"):
        raw = raw.split(",", 1)[-1]
    if len(raw) * 3 // 4 > MAX_CONTROL_IMAGE_BYTES:
        raise ValueError(f"image is larger than {MAX_CONTROL_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("image must be base64 (PNG/JPEG/WebP), optionally with a data: prefix") from exc
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError("image is base64 but not a readable PNG/JPEG/WebP image") from exc
    return raw


class ControlNetUnit(_Strict):
    """One ControlNet unit; always sent with ``enabled: true`` (its API default is false)."""

    module: str = Field("none", min_length=1, max_length=200,
                        description="preprocessor from /controlnet/module_list; 'none' = image used as is")
    model: Annotated[str, _not_none("a ControlNet unit needs a model; 'None' makes ControlNet skip the unit "
                                    "silently")] = Field(min_length=1, max_length=300,
                                                         description="a name from /controlnet/model_list")
    image: str = Field(min_length=1, description="control image, base64")
    weight: float = Field(1.0, ge=0.0, le=2.0)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: Literal["Balanced", "My prompt is more important", "ControlNet is more important"] = "Balanced"
    resize_mode: Literal["Just Resize", "Crop and Resize", "Resize and Fill"] = "Crop and Resize"
    pixel_perfect: bool = False

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        return _decode_base64_image(v)

    @model_validator(mode="after")
    def _guidance_order(self) -> ControlNetUnit:
        if self.guidance_start > self.guidance_end:
            raise ValueError("guidance_start must be <= guidance_end")
        return self


# Field types for the job model (schemas/job.py): ``adetailer: true`` means the default
# face + hand detectors (DEFAULT_ADETAILER_MODELS).
ADetailerUnits = Annotated[list[ADetailerUnit], Field(min_length=1, max_length=MAX_ADETAILER_UNITS)]
ADetailerField = bool | ADetailerUnits
ControlNetUnits = Annotated[list[ControlNetUnit], Field(min_length=1, max_length=MAX_CONTROLNET_UNITS)]

DEFAULT_ADETAILER_MODELS = ("face_yolov8s.pt", "hand_yolov8s.pt")


def adetailer_units(value: bool | list[ADetailerUnit] | None) -> list[ADetailerUnit]:
    """The units a job's ``adetailer`` field stands for (``true`` = face + hand)."""
    if value is True:
        return [ADetailerUnit(model=m) for m in DEFAULT_ADETAILER_MODELS]
    if not value:
        return []
    return list(value)
