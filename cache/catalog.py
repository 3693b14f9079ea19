"""The model catalog (models.json): ids, files, sources, families, recommended weights.

Layout::

    {"version": 1,
     "models": [{"id", "kind", "file", "family"?, "source"?, "sha256"?, "bytes"?,
                 "recommended_weight"?, "default"?, "backends"?, "pinned"?, "convert"?,
                 "at_start"?, "description"?, "note"?}, ...],
     "presets": {name: {...}}}

``source`` is a model-reference source ({"hf", "file", "revision"?} | {"civitai"} | {"url"})
or null when the file has no public source and must be put on the volume by hand.
``convert`` ({"from": "sdxl_ti_trainer", "file": <original file>}) builds ``file`` from
another file on arrival (the SDXL textual-inversion trainer layout). ``at_start`` (true, or
a list of backends) marks a model start.sh places before A1111 starts (cache/at_start.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import CatalogError

KINDS = ("checkpoint", "lora", "embedding", "controlnet", "adetailer", "upscaler", "vae", "text_encoder")
FAMILIES = ("sd15", "sdxl", "flux")
CONVERTERS = ("sdxl_ti_trainer",)
BACKENDS = ("a1111", "forge")


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    kind: str
    file: str  # file name inside the kind folder
    family: str | None
    source: dict | None
    sha256: str | None
    recommended_weight: float | None
    default: bool
    description: str
    # Optional fields of a models.json entry, beyond the required ones above:
    backends: tuple[str, ...] = ()      # default_checkpoint: backends this default is for; () = all
    pinned: bool = False                # never evicted
    convert: dict | None = None         # {"from": "sdxl_ti_trainer", "file": original}
    bytes: int | None = None
    note: str = ""
    at_start: tuple[str, ...] = ()      # backends whose start.sh places it (cache/at_start.py)

    @property
    def stem(self) -> str:
        return Path(self.file).stem


def _entry(raw: Any, i: int) -> CatalogEntry:
    where = f"models.json models[{i}]"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} is not an object")
    for key in ("id", "kind", "file"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CatalogError(f"{where} needs a non-empty string '{key}'")
    if raw["kind"] not in KINDS:
        raise CatalogError(f"{where} ({raw['id']}): kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
    file = raw["file"]
    if "/" in file or "\\" in file or file.startswith(".") or ".." in file:
        raise CatalogError(f"{where} ({raw['id']}): file {file!r} must be a plain file name")
    family = raw.get("family")
    if family is not None and family not in FAMILIES:
        raise CatalogError(f"{where} ({raw['id']}): family {family!r} is not one of {', '.join(FAMILIES)}")
    source = raw.get("source")
    if source is not None and (not isinstance(source, dict)
                               or sum(k in source for k in ("hf", "civitai", "url")) != 1):
        raise CatalogError(f"{where} ({raw['id']}): source needs exactly one of hf/civitai/url, or null")
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise CatalogError(f"{where} ({raw['id']}): sha256 must be 64 hex characters or null")
    convert = raw.get("convert")
    if convert is not None and (not isinstance(convert, dict) or convert.get("from") not in CONVERTERS
                                or not isinstance(convert.get("file"), str)):
        raise CatalogError(f"{where} ({raw['id']}): convert needs 'from' (one of {', '.join(CONVERTERS)}) "
                           "and 'file' (the trainer file's name)")
    at_start = raw.get("at_start", False)
    if at_start is True:
        at_start = list(BACKENDS)
    if at_start is False or at_start is None:
        at_start = []
    if not isinstance(at_start, list) or any(b not in BACKENDS for b in at_start):
        raise CatalogError(f"{where} ({raw['id']}): at_start must be true, false or a list of backends "
                           f"({', '.join(BACKENDS)})")
    weight = raw.get("recommended_weight")
    return CatalogEntry(
        id=raw["id"], kind=raw["kind"], file=file, family=family, source=source,
        sha256=sha.lower() if sha else None,
        recommended_weight=float(weight) if weight is not None else None,
        default=bool(raw.get("default", False)), description=str(raw.get("description", "")),
        backends=tuple(raw.get("backends") or ()), pinned=bool(raw.get("pinned", False)), convert=convert,
        bytes=raw.get("bytes"), note=str(raw.get("note", "")), at_start=tuple(at_start),
    )


@dataclass
class Catalog:
    models: list[CatalogEntry] = field(default_factory=list)
    presets: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index: dict[str, CatalogEntry] = {}
        # ids win over file names, file names over stems, so an id can never be shadowed.
        for key_of in (lambda e: e.id, lambda e: e.file, lambda e: e.stem):
            for e in self.models:
                self._index.setdefault(key_of(e).lower(), e)

    @classmethod
    def load(cls, path: Path) -> Catalog:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CatalogError(f"the model catalog {path} does not exist (MODELS_CATALOG)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CatalogError(f"the model catalog {path} is not readable JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Catalog:
        if not isinstance(data, dict) or not isinstance(data.get("models", []), list):
            raise CatalogError("models.json must be an object with a 'models' list")
        entries = [_entry(raw, i) for i, raw in enumerate(data.get("models", []))]
        seen: set[str] = set()
        for e in entries:
            if e.id.lower() in seen:
                raise CatalogError(f"models.json: id {e.id!r} appears twice")
            seen.add(e.id.lower())
        presets = data.get("presets") or {}
        if not isinstance(presets, dict):
            raise CatalogError("models.json 'presets' must be an object")
        return cls(entries, presets)

    def get(self, id_or_name: str) -> CatalogEntry | None:
        """By id, file name or stem, case-insensitive."""
        if not isinstance(id_or_name, str):
            return None
        return self._index.get(id_or_name.lower())

    def entries(self, kind: str | None = None) -> list[CatalogEntry]:
        return [e for e in self.models if kind is None or e.kind == kind]

    def default_checkpoint(self, backend: str) -> CatalogEntry | None:
        for e in self.models:
            if e.kind == "checkpoint" and e.default and (not e.backends or backend in e.backends):
                return e
        return None

    def defaults(self) -> list[CatalogEntry]:
        return [e for e in self.models if e.default]
