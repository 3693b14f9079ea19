"""What resolving a job's names gives the payload compiler and the result packager. PURE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UsedModel:
    """A model file on MODELS_DIR the job generates with: held from eviction, checked to be
    there right before generating, and recorded as used (a1111/holding.py)."""

    kind: str       # "checkpoint" | "lora" | "embedding"
    name: str       # what A1111 lists it as
    path: str       # relative to MODELS_DIR, e.g. "loras/x.safetensors"


@dataclass
class ResolvedLora:
    name: str       # what goes into <lora:NAME:W>: the file stem A1111 lists
    weight: float
    family: str | None


@dataclass
class Resolved:
    checkpoint: str                  # the exact title A1111 lists (for sd_model_checkpoint)
    checkpoint_name: str             # its stem (what info.sd_model_name reports)
    family: str | None
    sampler: str
    scheduler: str
    loras: list[ResolvedLora] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    placed: list[dict[str, Any]] = field(default_factory=list)  # models the cache placed for this job
    uses: list[UsedModel] = field(default_factory=list)         # its model files on MODELS_DIR
    # The escape hatch (a1111/hatch.py): the value stated for every allowed option the job leaves
    # unset, and the names it gives as A1111 lists them (field path -> listed name).
    option_defaults: dict[str, Any] = field(default_factory=dict)
    a1111_names: dict[str, str] = field(default_factory=dict)
