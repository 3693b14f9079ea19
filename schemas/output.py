"""Output options of a job (design.md section 3, ``output``); refined by the output owner."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100)
    upload: Literal["auto", "never", "always"] = "auto"
