"""Model references in a job: a plain name (catalog id or file on the volume) or one
download source ({hf, file} | {civitai} | {url}), and the LoRA entries that carry them.

A reference names a file inside one model folder, so a name may hold no path separator and
no "..": the cache joins it under MODELS_DIR.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from schemas.messages import got as _got
from schemas.messages import short_error as _short_error

_REF_RE = re.compile(r"^[^/\\\x00]{1,255}$")


class _Ref(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str | None = Field(None, min_length=1, max_length=200, description="stem to store the file under")


class HFSource(_Ref):
    hf: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/repo")
    file: str = Field(min_length=1, max_length=500)
    revision: str | None = Field(None, min_length=1, max_length=100)


class CivitaiSource(_Ref):
    civitai: int = Field(ge=1, description="Civitai model version id")


class UrlSource(_Ref):
    url: str = Field(min_length=9, max_length=2000)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


Source = HFSource | CivitaiSource | UrlSource
_SOURCES = {"hf": HFSource, "civitai": CivitaiSource, "url": UrlSource}
# One example of each accepted form, shown when a reference has the wrong shape.
SOURCE_FORMS = {
    "hf": '{"hf": "owner/repo", "file": "model.safetensors"}',
    "civitai": '{"civitai": 135867} (a model version id, an integer)',
    "url": '{"url": "https://host/model.safetensors", "sha256": "<optional 64 hex>"}',
}
REF_FORMS = "a name string (catalog id or file on the volume), or " + " or ".join(
    f.split(" (")[0] for f in SOURCE_FORMS.values())
LORA_FORMS = ('"name", {"name": "detail_tweaker", "weight": 0.8}, {"civitai": 135867, "weight": 0.8}, '
              '{"hf": "owner/repo", "file": "x.safetensors", "weight": 0.8} or {"url": "https://...", "weight": 0.8}')


def check_name(value: str) -> str:
    if not _REF_RE.match(value) or value.strip() in {"", ".", ".."} or ".." in value.split("."):
        raise ValueError(f"{_got(value)} is not a plain model name: no path separators or '..' allowed")
    if value != value.strip():
        raise ValueError(f"{_got(value)} has leading or trailing spaces")
    return value


def check_https(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{_got(url)} is not an https:// URL")
    return url


def _parse_ref(value: Any) -> str | Source:
    """A model reference: a name (catalog id / file on the volume) or one source object."""
    if isinstance(value, str):
        return check_name(value)
    if isinstance(value, BaseModel) and isinstance(value, HFSource | CivitaiSource | UrlSource):
        return value
    if isinstance(value, dict):
        kinds = [k for k in _SOURCES if k in value]
        if len(kinds) != 1:
            raise ValueError("a model source object needs exactly one of 'hf' (with 'file'), 'civitai' or 'url': "
                             + REF_FORMS)
        try:
            src = _SOURCES[kinds[0]].model_validate(value)
        except ValidationError as exc:
            raise ValueError("; ".join(_short_error(e) for e in exc.errors())
                             + f"; the {kinds[0]} form is {SOURCE_FORMS[kinds[0]]}") from None
        if isinstance(src, UrlSource):
            check_https(src.url)
        if isinstance(src, HFSource):
            # A file at the top of the repo (every catalog source is): a folder part would make
            # the stored name ambiguous, and path-like names are refused everywhere.
            try:
                check_name(src.file)
            except ValueError:
                raise ValueError(f"file {src.file!r} must be a file name at the top of the Hugging Face "
                                 "repo (no folders, no '..')") from None
        if src.name is not None:
            check_name(src.name)
        return src
    raise ValueError(f"a model reference is {REF_FORMS}; got {_got(value)}")


ModelRef = Annotated[str | Source, BeforeValidator(_parse_ref)]


def ref_value(ref: str | Source) -> str | dict[str, Any]:
    """The form cache.ModelCache takes: the string, or the source as a plain dict."""
    return ref if isinstance(ref, str) else ref.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- LoRAs
def _nested_source_hint(value: dict[str, Any]) -> str:
    """What to write instead of a source nested in a LoRA's ``name`` ({"name": {"civitai": 1}})."""
    nested = value["name"]
    fixed = {k: v for k, v in nested.items() if isinstance(k, str)}
    fixed["weight"] = value.get("weight", fixed.get("weight", 0.8))
    shown = json.dumps(fixed, default=str)
    shown = shown if len(shown) <= 120 else LORA_FORMS
    return (f"'name' must be a string (a catalog id or file name); a download source goes beside 'weight', "
            f"not inside 'name': {shown}")


class LoraSpec(BaseModel):
    """``{name, weight}`` or ``{hf|civitai|url source, weight}`` (``name`` then = stored stem)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str | None = Field(None, min_length=1, max_length=200)
    hf: str | None = None
    file: str | None = None
    revision: str | None = None
    civitai: int | None = None
    url: str | None = None
    sha256: str | None = None
    # None: the catalog's recommended weight, else 1.0.
    weight: float | None = Field(None, ge=-5.0, le=5.0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        # A bare string is shorthand for {"name": ...}.
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and isinstance(value.get("name"), dict):
            raise ValueError(_nested_source_hint(value))
        if not isinstance(value, dict | LoraSpec):
            raise ValueError(f"a LoRA entry is one of {LORA_FORMS}; got {_got(value)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> LoraSpec:
        kinds = [k for k in ("hf", "civitai", "url") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError("give one source per LoRA: 'name', or one of 'hf' (with 'file'), 'civitai', 'url'")
        if not kinds and self.name is None:
            raise ValueError("a LoRA needs 'name' (catalog id or file on the volume) or a source 'hf'/'civitai'/'url'")
        if not kinds and any(getattr(self, k) is not None for k in ("file", "revision", "sha256")):
            raise ValueError("'file', 'revision' and 'sha256' belong to an 'hf' or 'url' source")
        self.ref()  # validates the reference itself
        return self

    def ref(self) -> str | Source:
        """The model reference this entry names."""
        data = {k: getattr(self, k) for k in ("name", "hf", "file", "revision", "civitai", "url", "sha256")
                if getattr(self, k) is not None}
        if set(data) == {"name"}:
            return _parse_ref(data["name"])
        return _parse_ref(data)
