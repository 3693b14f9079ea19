"""The model cache on the shared network volume.

``ModelCache.ensure(kind, ref)`` makes a model present under MODELS_DIR/<kind folder> and
returns where it is: found on the volume, converted from a file on the volume, or
downloaded (Hugging Face via huggingface-hub; Civitai and URLs via requests), verified and
renamed into place under a per-file lease so that all workers download it once. Refreshing
A1111's lists afterwards is the caller's job (a1111/resolve.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.bounds import Bounds, size_caps
from cache.catalog import Catalog
from cache.convert import convert_trainer_ti, is_trainer_ti
from cache.credentials import auth_headers
from cache.download import DownloadConfig, Fetched, fetch_url
from cache.evict import evict
from cache.hf import fetch_hf, sha256_file
from cache.inspect import NotSafetensors, family_from_header, safetensors_header
from cache.refs import ModelRequest, parse_ref, source_key
from cache.registry import Registry, lease, now
from cache.safety import MODEL_EXTS, check_format, inside, redact_url, safe_name
from cache.transfer import verify_sha256
from cache.usage import noted
from schemas.errors import (
    CatalogError,
    DownloadFailed,
    ModelNotFound,
    Problem,
    ValidationFailed,
    WorkerError,
    problems_error,
)
from schemas.settings import Settings

log = logging.getLogger(__name__)

KIND_DIRS = {"checkpoint": "checkpoints", "lora": "loras", "embedding": "embeddings",
             "controlnet": "controlnet", "adetailer": "adetailer", "upscaler": "upscalers",
             # Forge's separate Flux modules (--vae-dir / --text-encoder-dir):
             "vae": "vae", "text_encoder": "text_encoder"}
PLURALS = {"checkpoints": "checkpoint", "loras": "lora", "embeddings": "embedding", "upscalers": "upscaler",
           "controlnets": "controlnet", "vaes": "vae", "text_encoders": "text_encoder"}
# Trainer-format originals that are converted on arrival wait here (A1111 does not scan it).
INCOMING_DIR = "incoming"
STAGING_DIR = ".downloads"


@dataclass(frozen=True)
class PlacedModel:
    kind: str
    name: str            # file stem A1111 lists it under
    path: str            # relative to MODELS_DIR, e.g. "loras/x.safetensors"
    abs_path: Path
    sha256: str | None
    bytes: int
    downloaded: bool     # True when this call transferred bytes
    family: str | None   # "sd15" | "sdxl" | "flux" | None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "path": self.path, "sha256": self.sha256,
                "bytes": self.bytes, "downloaded": self.downloaded}


def civitai_base() -> str:
    return (os.environ.get("CIVITAI_BASE_URL") or "https://civitai.com").rstrip("/")


def _shown(ref: str | dict) -> str:
    if isinstance(ref, str):
        return ref
    return json.dumps({k: (redact_url(v) if k == "url" else v) for k, v in ref.items()}, sort_keys=True)


class ModelCache:
    """``deadline`` (a ``time.monotonic()`` value, named by ``deadline_name`` in messages) ends
    every download and lease wait of this cache; None: each ``ensure`` gets JOB_TIMEOUT from
    its start and each ``prefetch`` PREFETCH_TIMEOUT."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None, *, deadline: float | None = None,
                 deadline_name: str = "JOB_TIMEOUT") -> None:
        self.settings = settings
        self.deadline, self.deadline_name = deadline, deadline_name
        self.root = Path(settings.models_dir)
        if catalog is None and Path(settings.catalog_path).is_file():
            catalog = Catalog.load(Path(settings.catalog_path))
        self.catalog = catalog
        self.registry = Registry(self.root, KIND_DIRS)
        self.cfg = DownloadConfig.from_env()

    # ------------------------------------------------------------------ lookups
    def _folder(self, kind: str) -> Path:
        if kind not in KIND_DIRS:
            raise ValidationFailed(f"model kind {kind!r} is unknown; allowed: {', '.join(KIND_DIRS)}")
        folder = self.root / KIND_DIRS[kind]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _existing(self, req: ModelRequest) -> Path | None:
        folder = self._folder(req.kind)
        if req.file is None:
            entry = self.registry.find_source(req.kind, source_key(req.source))
            return inside(self.root, self.root / entry["path"]) if entry else None
        names = [req.file + ext for ext in MODEL_EXTS] if req.stem_only else [req.file]
        for name in names:
            p = folder / name
            if p.is_symlink() or p.exists():
                real = inside(self.root, p)
                if real.is_file():
                    return p
        return None

    def _placed(self, req: ModelRequest, path: Path, *, downloaded: bool, sha: str | None = None) -> PlacedModel:
        rel = path.relative_to(self.root).as_posix()
        if sha is None:
            sha = (self.registry.entries().get(rel) or {}).get("sha256")
        family = req.entry.family if req.entry else None
        if path.name.lower().endswith(".safetensors"):
            try:  # a file on the volume is checked as strictly as a download: A1111 would fail on it later
                header = safetensors_header(path)
                family = family or family_from_header(header)
            except NotSafetensors as exc:
                raise ValidationFailed(f"{req.kind} file MODELS_DIR/{rel} is not a valid .safetensors file ({exc}); "
                                       "replace or remove it") from None
            except OSError:
                pass  # unreadable now: the family stays unknown, A1111 reports the file itself
        return PlacedModel(req.kind, path.stem, rel, path, sha, path.stat().st_size, downloaded, family)

    def find_local(self, kind: str, ref: str | dict) -> PlacedModel | None:
        """The model when it is already on the volume; never downloads or converts."""
        req = parse_ref(kind, ref, self.catalog)
        found = self._existing(req)
        return self._placed(req, found, downloaded=False) if found else None

    # ------------------------------------------------------------------ ensure
    def ensure(self, kind: str, ref: str | dict, *, in_use: Iterable[str] = ()) -> PlacedModel:
        req = parse_ref(kind, ref, self.catalog)
        label = req.entry.id if req.entry else (req.file or _shown(ref))
        what = f"{kind} {label!r}"
        found = self._existing(req)
        if found is not None:
            self._touch(req, found)
            return self._placed(req, found, downloaded=False)
        if req.source is None and not (req.entry and req.entry.convert):
            raise ModelNotFound(self._missing_message(req, ref))
        if req.file:
            check_format(req.file, allow_pickle=self.settings.allow_pickle_models,
                         pinned_sha256=req.entry.sha256 if req.entry else None)
        bounds = self._bounds()
        bounds.check_time(what)
        with lease(self.root, req.key, timeout=max(min(self.cfg.lock_timeout_s, bounds.left()), 0.0), what=what):
            found = self._existing(req)  # another worker may have placed it while we waited
            if found is not None:
                self._touch(req, found)
                return self._placed(req, found, downloaded=False)
            placed = self._place(req, what, bounds)
        if self.settings.cache_max_gb:
            protected = {placed.path, *in_use}
            if self.catalog is not None:
                protected |= {f"{KIND_DIRS[e.kind]}/{e.file}" for e in self.catalog.defaults()}
            evict(self.registry, self.settings.cache_max_gb, protected)
        return placed

    def _bounds(self) -> Bounds:
        """The time and rate limits of one download (its size caps come in ``_fetch``)."""
        s = self.settings
        deadline = self.deadline if self.deadline is not None else time.monotonic() + s.job_timeout_s
        return Bounds(deadline, self.deadline_name, s.download_min_rate_kbps * 1000, s.download_rate_window_s)

    def _sized(self, bounds: Bounds, req: ModelRequest, folder: Path) -> Bounds:
        part = folder / req.part_name
        already = part.stat().st_size if part.is_file() else 0
        caps = size_caps(folder, catalog_bytes=req.entry.bytes if req.entry else None,
                         cache_max_gb=self.settings.cache_max_gb, already=already)
        return dataclasses.replace(bounds, caps=tuple(caps))

    def _missing_message(self, req: ModelRequest, ref: str | dict) -> str:
        folder = KIND_DIRS[req.kind]
        if req.entry is not None:
            return (f"{req.kind} '{req.entry.id}' has no public source and is not on the volume: put the file at "
                    f"{self.root / folder / req.entry.file} (MODELS_DIR/{folder}/{req.entry.file})")
        shown = req.file + (".safetensors" if req.stem_only else "") if req.file else _shown(ref)
        return (f"{req.kind} '{ref if isinstance(ref, str) else shown}' is not in the catalog and not on the volume "
                f"(looked for MODELS_DIR/{folder}/{shown}); give a source {{hf|civitai|url}} or a catalog id")

    def _touch(self, req: ModelRequest, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        try:
            self.registry.touch(rel, {"kind": req.kind, "name": path.stem, "path": rel,
                                      "bytes": path.stat().st_size,
                                      "pinned": bool(req.entry and (req.entry.pinned or req.entry.default))})
        except (WorkerError, OSError) as exc:  # bookkeeping must not fail a job whose model is present
            log.warning("cache registry not updated for %s: %s", rel, exc)
        else:
            noted(self.root, rel)  # this use is written: the job's batched use record skips it

    # ------------------------------------------------------------------ placing
    def _fetch(self, req: ModelRequest, folder: Path, what: str, bounds: Bounds) -> tuple[Fetched, dict]:
        """Download (or convert from the volume) into a hidden part file in ``folder``."""
        src = req.source or {}
        part = folder / req.part_name
        allow_private = self.settings.download_allow_private
        if req.source is None:  # a catalog conversion from a file on the volume
            original = self._find_original(req)
            convert_trainer_ti(original, part)
            size = part.stat().st_size
            rel = original.relative_to(self.root).as_posix()
            return Fetched(part, sha256_file(part), size, 0, None, rel), {"volume": rel}
        bounds = self._sized(bounds, req, folder)
        if "hf" in src:
            staging = self.root / STAGING_DIR / req.key
            try:
                got = fetch_hf(src["hf"], src["file"], src.get("revision"), staging, what=what,
                               allow_private=allow_private, cfg=self.cfg, bounds=bounds, expected_sha256=req.sha256)
                os.replace(got.path, part)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            got.path = part
            return got, dict(src)
        # A token goes only to the host it was issued for (cache/credentials.py): a job's
        # URL on a look-alike host gets none.
        url = f"{civitai_base()}/api/download/models/{src['civitai']}" if "civitai" in src else src["url"]
        headers, token_var = auth_headers(url)
        want = not (req.file or "").lower().endswith(MODEL_EXTS[1:]) if "civitai" in src \
            else (req.file or "").lower().endswith(".safetensors")
        got = fetch_url(url, part, what=what, headers=headers, token_var=token_var, allow_private=allow_private,
                        expected_sha256=req.sha256, want_safetensors=want, cfg=self.cfg, bounds=bounds)
        return got, (dict(src) if "civitai" in src else {"url": redact_url(src["url"])})

    def _find_original(self, req: ModelRequest) -> Path:
        orig = req.entry.convert["file"]
        safe_name(orig, "convert.file")
        for folder in (self.root / INCOMING_DIR, self.root / KIND_DIRS[req.kind]):
            p = folder / orig
            if p.is_symlink() or p.exists():
                inside(self.root, p)
                if p.is_file():
                    return p
        raise ModelNotFound(
            f"{req.kind} '{req.entry.id}' is converted from the trainer file {orig}, which is not on the volume: "
            f"put it at {self.root / INCOMING_DIR / orig} (MODELS_DIR/{INCOMING_DIR}/{orig}; "
            f"MODELS_DIR/{KIND_DIRS[req.kind]}/{orig} also works)")

    def _final_name(self, req: ModelRequest, got: Fetched, folder: Path) -> str:
        if req.file:
            return req.file
        vid = (req.source or {}).get("civitai", "x")
        name = got.filename or ""
        try:
            safe_name(name)
        except ValidationFailed:
            name = ""
        if not name.lower().endswith(MODEL_EXTS):
            name = f"civitai_{vid}.safetensors"
        if (folder / name).exists():  # a different file already uses that name
            stem, ext = os.path.splitext(name)
            name = f"{stem}_civitai{vid}{ext}"
        return name

    def _place(self, req: ModelRequest, what: str, bounds: Bounds) -> PlacedModel:
        folder = self._folder(req.kind)
        got, source = self._fetch(req, folder, what, bounds)
        converted = folder / f"{got.path.name}.conv"
        try:
            name = self._final_name(req, got, folder)
            check_format(name, allow_pickle=self.settings.allow_pickle_models,
                         pinned_sha256=req.entry.sha256 if req.entry else None)
            sha = got.sha256
            if req.source is not None:
                verify_sha256(sha, req.sha256, what)
            if name.lower().endswith(".safetensors"):
                try:
                    header = safetensors_header(got.path)
                except NotSafetensors as exc:
                    raise DownloadFailed(f"{what}: the downloaded file is not a valid .safetensors file ({exc}); "
                                         "nothing was kept") from None
                if req.kind == "embedding" and is_trainer_ti(header):
                    convert_trainer_ti(got.path, converted)
                    os.replace(converted, got.path)
                    sha = sha256_file(got.path)
            final = folder / name
            inside(self.root, final.parent)
            if final.is_symlink():
                raise ValidationFailed(f"{what}: {final.name} is a symlink on the volume; refusing to replace it")
            os.replace(got.path, final)
        finally:
            got.path.unlink(missing_ok=True)
            converted.unlink(missing_ok=True)
        rel = final.relative_to(self.root).as_posix()
        entry = {"kind": req.kind, "name": final.stem, "path": rel, "source": source,
                 "source_key": source_key(req.source) if req.source else None, "sha256": sha,
                 "bytes": final.stat().st_size, "added": now(), "last_used": now(), "uses": 1,
                 "pinned": bool(req.entry and (req.entry.pinned or req.entry.default)),
                 "downloaded": req.source is not None, "catalog_id": req.entry.id if req.entry else None}
        try:
            self.registry.record(entry)
        except (WorkerError, OSError) as exc:  # the file is in place; only the bookkeeping failed
            log.warning("cache registry not updated for %s: %s", rel, exc)
        else:
            noted(self.root, rel)
        log.info("cache: placed %s (%d bytes, %d transferred) from %s", rel, entry["bytes"], got.transferred,
                 json.dumps(source))
        return self._placed(req, final, downloaded=req.source is not None, sha=sha)

    # ------------------------------------------------------------------ prefetch
    def prefetch(self, refs: dict[str, list[str | dict]], *, catalog_defaults: bool = False) -> list[dict]:
        """Place every referenced model; returns [{kind, name, path, sha256, bytes, downloaded}].

        All references are tried; if some fail, one error lists every failure in ``details``
        and what was placed in ``models``. Without a deadline of its own, the whole prefetch
        ends by PREFETCH_TIMEOUT.
        """
        if self.deadline is None:
            self.deadline = time.monotonic() + self.settings.prefetch_timeout_s
            self.deadline_name = "PREFETCH_TIMEOUT"
        todo: list[tuple[str, str | dict]] = []
        for key, items in (refs or {}).items():
            kind = PLURALS.get(key, key)
            self._folder(kind)
            for ref in items or []:
                todo.append((kind, ref))
        if catalog_defaults:
            if self.catalog is None:
                raise CatalogError("prefetch catalog=true, but there is no model catalog (MODELS_CATALOG)")
            todo += [(e.kind, e.id) for e in self.catalog.defaults()]
        seen: set[str] = set()
        placed: list[dict] = []
        failures: list[Problem] = []
        for kind, ref in todo:
            key = f"{kind}|{_shown(ref)}"
            if key in seen:
                continue
            seen.add(key)
            try:
                p = self.ensure(kind, ref, in_use=[x["path"] for x in placed])
            except WorkerError as exc:
                failures.append(Problem(kind, exc.message, exc.error_type, hints={
                    "kind": kind, "ref": _shown(ref), "error": exc.message, "error_type": exc.error_type}))
            else:
                placed.append(p.as_dict())
        if failures:
            raise problems_error(failures, lead=f"prefetch: {len(failures)} of {len(seen)} model(s) could not be "
                                                "placed; first: ", models=placed)
        return placed


__all__ = ["KIND_DIRS", "Catalog", "ModelCache", "PlacedModel"]
