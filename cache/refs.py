"""Model references -> what to look for on the volume and where to fetch it from (pure).

A reference is a catalog id, a file name / stem on the volume, or a source dict
({hf, file, revision?} | {civitai} | {url, sha256?}, each with an optional ``name``).
This module decides the target file name and a stable key for locking and for the
registry; it does no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from cache.catalog import Catalog, CatalogEntry
from cache.safety import MODEL_EXTS, redact_url, safe_name
from schemas.errors import ValidationFailed

SOURCE_KEYS = ("hf", "civitai", "url")


@dataclass(frozen=True)
class ModelRequest:
    kind: str
    file: str | None          # target file name in the kind folder; None: learnt from the download
    source: dict | None       # normalised source (no secrets), None: must already be on the volume
    sha256: str | None
    entry: CatalogEntry | None = None
    stem_only: bool = False   # a bare stem on the volume: any model extension matches

    @property
    def part_name(self) -> str:
        """The hidden in-progress file beside the target. It names the source too, so a part
        left by a crash is only ever resumed from the same source."""
        src = hashlib.sha256(source_key(self.source).encode()).hexdigest()[:8]
        return f".{self.file or source_key(self.source)}.{src}.part"

    @property
    def key(self) -> str:
        """Stable identity for the per-download lock and the registry's source lookup."""
        if self.file:
            return f"{self.kind}--{self.file}"
        return f"{self.kind}--{source_key(self.source)}"


def source_key(source: dict | None) -> str:
    if not source:
        return "none"
    if "civitai" in source:
        return f"civitai-{source['civitai']}"
    if "hf" in source:
        rev = source.get("revision") or "main"
        return "hf-" + hashlib.sha256(f"{source['hf']}|{source['file']}|{rev}".encode()).hexdigest()[:16]
    return "url-" + hashlib.sha256(redact_url(source["url"]).encode()).hexdigest()[:16]


def _ext(name: str) -> str:
    low = name.lower()
    return next((e for e in MODEL_EXTS if low.endswith(e)), "")


def url_file_name(url: str) -> str:
    """<url basename stem>_<sha256(url)[:8]><ext> (ext .safetensors unless the URL names another
    model extension). The hash is over the redacted URL so a rotated ?token= keeps the name."""
    path = unquote(urlsplit(url).path)
    base = PurePosixPath(path).name or "model"
    ext = _ext(base) or ".safetensors"
    stem = base[: -len(ext)] if _ext(base) else base
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._") or "model"
    digest = hashlib.sha256(redact_url(url).encode()).hexdigest()[:8]
    return f"{stem[:80]}_{digest}{ext}"


def _with_name(name: str | None, default_file: str | None) -> str | None:
    """The stored file name: the caller's stem (keeping the source's extension) or the default."""
    if name is None:
        return default_file
    safe_name(name, "name")
    if _ext(name):
        return name
    ext = _ext(default_file or "") or ".safetensors"
    return name + ext


def normalise_source(raw: dict[str, Any]) -> dict:
    kinds = [k for k in SOURCE_KEYS if k in raw]
    if len(kinds) != 1:
        raise ValidationFailed("a model source needs exactly one of 'hf' (with 'file'), 'civitai' or 'url'")
    kind = kinds[0]
    if kind == "hf":
        repo, file = raw.get("hf"), raw.get("file")
        if not isinstance(repo, str) or repo.count("/") != 1 or ".." in repo or not isinstance(file, str) \
                or not file or file.startswith("/") or ".." in file.split("/"):
            raise ValidationFailed("an hf source needs 'hf': 'owner/repo' and 'file': a path inside the repo")
        out: dict[str, Any] = {"hf": repo, "file": file}
        if raw.get("revision"):
            out["revision"] = str(raw["revision"])
        return out
    if kind == "civitai":
        vid = raw.get("civitai")
        if isinstance(vid, bool) or not isinstance(vid, int | str) or not str(vid).isdigit() or int(vid) < 1:
            raise ValidationFailed("a civitai source needs 'civitai': a model version id (positive integer)")
        return {"civitai": int(vid)}
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise ValidationFailed("a url source needs 'url': an http(s) URL")
    return {"url": url}


def parse_ref(kind: str, ref: str | dict, catalog: Catalog | None) -> ModelRequest:
    """What ``ref`` asks for; raises ValidationFailed for malformed references."""
    if isinstance(ref, str):
        entry = catalog.get(ref) if catalog is not None else None
        # A catalog entry of another kind does not shadow a file of this kind with that name.
        if entry is not None and entry.kind == kind:
            return ModelRequest(kind, entry.file, entry.source, entry.sha256, entry)
        safe_name(ref)
        if _ext(ref):
            return ModelRequest(kind, ref, None, None)
        return ModelRequest(kind, ref, None, None, stem_only=True)
    if not isinstance(ref, dict):
        raise ValidationFailed("a model reference is a name string or a source object {hf|civitai|url}")
    source = normalise_source(ref)
    sha = ref.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        raise ValidationFailed("sha256 must be 64 hex characters")
    name = ref.get("name")
    if "hf" in source:
        default = PurePosixPath(source["file"]).name
        safe_name(default, "hf file name")
        file = _with_name(name, default)
    elif "url" in source:
        file = _with_name(name, url_file_name(source["url"]))
    else:  # civitai: the name comes from the download (Content-Disposition) unless given
        file = _with_name(name, None)
    return ModelRequest(kind, file, source, sha.lower() if sha else None)
