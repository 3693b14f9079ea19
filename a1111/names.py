"""Resolve every name a job uses against what the live A1111 lists, before generation.

A1111 silently ignores an unknown LoRA tag, an unknown sampler (it becomes DPM++ 2M), an
unknown scheduler and an unknown override checkpoint; an SD1.5 LoRA on an SDXL checkpoint
answers 200 and does nothing useful (recordings ``txt2img_lora_unknown``,
``txt2img_sampler_unknown``, ``txt2img_override_checkpoint_unknown``,
``sdxl_txt2img_sd15_lora_mismatch``). So every name is checked here, with close-match
suggestions, and models A1111 does not list are placed by the cache, after which A1111's
list is refreshed and checked again.

``LiveLists`` caches the lists per A1111 URL for the worker's life and re-reads a list
when a name is missing from it (a file may have been added since).
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cache import KIND_DIRS, ModelCache
from cache.inspect import family_from_metadata as lora_family_from_metadata
from cache.inspect import model_family
from schemas.errors import (
    A1111Error,
    DownloadFailed,
    ModelNotFound,
    Problem,
    ValidationFailed,
    WorkerError,
    problems_error,
)
from schemas.job import Job, Source, ref_value

log = logging.getLogger(__name__)

FAMILY_NAMES = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
# /sdapi/v1/<route> and the refresh-<name> that rescans its folder, per model kind.
ROUTES = {"checkpoint": ("/sdapi/v1/sd-models", "checkpoints"),
          "lora": ("/sdapi/v1/loras", "loras"),
          "embedding": ("/sdapi/v1/embeddings", "embeddings")}
# Embedding width -> the family whose text encoder it fits (a1111-api.md 4.2).
EMBEDDING_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
TXT2IMG_SCHEMA = "StableDiffusionProcessingTxt2Img"


def family_label(family: str | None) -> str:
    return FAMILY_NAMES.get(family or "", family or "unknown")


def suggest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[c] for c in close]


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = suggest(name, candidates)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    if not candidates:
        return "none are available"
    shown = ", ".join(f"'{c}'" for c in candidates[:12])
    return f"available: {shown}{', ...' if len(candidates) > 12 else ''}"


# --------------------------------------------------------------------------- samplers (pure)
def split_sampler(name: str, samplers: list[dict], schedulers: list[dict]) -> tuple[str, str | None] | None:
    """(sampler name, scheduler label or None) for ``name``, or None when unknown.

    Exact sampler names and aliases win; otherwise a legacy "<sampler> <scheduler>" name is
    split on the LONGEST scheduler suffix whose prefix is a real sampler. A1111 itself takes
    the first suffix in list order, so "Euler SGM Uniform" becomes DPM++ 2M + Uniform there.
    """
    wanted = name.strip().lower()
    by_name = _sampler_index(samplers)
    if wanted in by_name:
        return by_name[wanted], None
    suffixes: list[tuple[str, str]] = []  # (lower-case suffix, scheduler label)
    for s in schedulers:
        label = s.get("label") or s.get("name")
        for text in [s.get("label"), s.get("name"), *(s.get("aliases") or [])]:
            if text:
                suffixes.append((str(text).lower(), str(label)))
    for suffix, label in sorted(suffixes, key=lambda x: -len(x[0])):
        if wanted.endswith(" " + suffix):
            prefix = wanted[: -len(suffix) - 1].strip()
            if prefix in by_name:
                return by_name[prefix], label
    return None


def _sampler_index(samplers: list[dict]) -> dict[str, str]:
    idx: dict[str, str] = {}
    for s in samplers:
        nm = str(s.get("name"))
        idx.setdefault(nm.lower(), nm)
        for alias in s.get("aliases") or []:
            idx.setdefault(str(alias).lower(), nm)
    return idx


def find_scheduler(name: str, schedulers: list[dict]) -> str | None:
    wanted = name.strip().lower()
    for s in schedulers:
        for text in [s.get("label"), s.get("name"), *(s.get("aliases") or [])]:
            if text and str(text).lower() == wanted:
                return str(s.get("label") or s.get("name"))
    return None


def resolve_sampler(sampler_name: str | None, scheduler: str | None, samplers: list[dict],
                    schedulers: list[dict]) -> tuple[str, str, list[Problem]]:
    """(sampler, scheduler label, problems). PURE."""
    problems: list[Problem] = []
    sampler, implied = DEFAULT_SAMPLER, None
    if sampler_name is not None:
        split = split_sampler(sampler_name, samplers, schedulers)
        if split is None:
            names = [str(s.get("name")) for s in samplers]
            problems.append(Problem("sampler_name",
                                    f"unknown sampler '{sampler_name}'; {_did_you_mean(sampler_name, names)}",
                                    hints={"suggestions": suggest(sampler_name, names)}))
        else:
            sampler, implied = split
    chosen = implied or DEFAULT_SCHEDULER
    if scheduler is not None:
        label = find_scheduler(scheduler, schedulers)
        if label is None:
            labels = [str(s.get("label") or s.get("name")) for s in schedulers]
            problems.append(Problem("scheduler", f"unknown scheduler '{scheduler}'; {_did_you_mean(scheduler, labels)}",
                                    hints={"suggestions": suggest(scheduler, labels)}))
        elif implied is not None and label != implied:
            problems.append(Problem("scheduler", f"sampler_name '{sampler_name}' already names scheduler "
                                                 f"'{implied}', but scheduler is '{scheduler}'; give one of them"))
        else:
            chosen = label
    return sampler, chosen, problems


# --------------------------------------------------------------------------- live lists
class LiveLists:
    """Per-worker cache of A1111's lists, keyed by its URL; re-read on a miss."""

    _instances: dict[str, LiveLists] = {}
    _instances_lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self.client = client
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.families: dict[str, str | None] = {}  # checkpoint title -> family
        # The checkpoint the last job stated (override_settings_restore_afterwards is false,
        # so it stays loaded): a job naming none keeps it without asking A1111 each time.
        self.loaded: str | None = None

    @classmethod
    def for_client(cls, client: Any) -> LiveLists:
        with cls._instances_lock:
            inst = cls._instances.get(client.base_url)
            if inst is None:
                inst = cls._instances[client.base_url] = cls(client)
            inst.client = client
            return inst

    @classmethod
    def forget_all(cls) -> None:
        with cls._instances_lock:
            cls._instances.clear()

    def get(self, path: str, *, fresh: bool = False) -> Any:
        with self._lock:
            if not fresh and path in self._data:
                return self._data[path]
        value = self.client.get(path)
        with self._lock:
            self._data[path] = value
        return value

    def samplers(self, fresh: bool = False) -> list[dict]:
        return _as_list(self.get("/sdapi/v1/samplers", fresh=fresh))

    def schedulers(self, fresh: bool = False) -> list[dict]:
        return _as_list(self.get("/sdapi/v1/schedulers", fresh=fresh))

    def checkpoints(self, fresh: bool = False) -> list[dict]:
        # A1111 selects a checkpoint by its title: an entry without one cannot be used.
        return [e for e in _as_list(self.get("/sdapi/v1/sd-models", fresh=fresh)) if isinstance(e.get("title"), str)]

    def loras(self, fresh: bool = False) -> list[dict]:
        return _as_list(self.get("/sdapi/v1/loras", fresh=fresh))

    def embeddings(self, fresh: bool = False) -> dict[str, dict]:
        """name -> entry (with ``skipped`` True for those A1111 could not use now)."""
        raw = self.get("/sdapi/v1/embeddings", fresh=fresh)
        out: dict[str, dict] = {}
        if isinstance(raw, dict):
            for state in ("loaded", "skipped"):
                for name, entry in (raw.get(state) or {}).items():
                    out[str(name)] = {**(entry if isinstance(entry, dict) else {}), "skipped": state == "skipped"}
        return out

    def openapi(self) -> dict:
        value = self.get("/openapi.json")
        return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# --------------------------------------------------------------------------- matching
def _strip_hash(title: str) -> str:
    return title.rsplit(" [", 1)[0] if title.endswith("]") and " [" in title else title


def checkpoint_keys(entry: dict) -> set[str]:
    title = str(entry.get("title") or "")
    keys = {title, _strip_hash(title), str(entry.get("model_name") or "")}
    filename = str(entry.get("filename") or "")
    if filename:
        p = PurePosixPath(filename.replace("\\", "/"))
        keys |= {p.name, p.stem}
    bare = PurePosixPath(_strip_hash(title))
    keys |= {bare.name, bare.stem}
    return {k.lower() for k in keys if k}


def find_checkpoint(name: str, listed: list[dict]) -> dict | None:
    wanted = name.lower()
    for entry in listed:  # the exact title first: it is what A1111 matches on
        if str(entry.get("title", "")).lower() == wanted:
            return entry
    for entry in listed:
        if wanted in checkpoint_keys(entry):
            return entry
    return None


def find_lora(name: str, listed: list[dict]) -> dict | None:
    wanted = name.lower()
    stem = PurePosixPath(wanted).stem if wanted.endswith((".safetensors", ".pt", ".ckpt")) else wanted
    for key in ("name", "alias"):
        for entry in listed:
            if str(entry.get(key, "")).lower() in {wanted, stem}:
                return entry
    return None


def find_embedding(name: str, listed: dict[str, dict]) -> str | None:
    wanted = name.lower()
    stem = PurePosixPath(wanted).stem if wanted.endswith((".safetensors", ".pt", ".bin")) else wanted
    for key in listed:
        if key.lower() in {wanted, stem}:
            return key
    return None


# --------------------------------------------------------------------------- result
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


class _Resolver:
    def __init__(self, job: Job, client: Any, settings: Any, catalog: Any, cache: Any) -> None:
        self.job, self.client, self.settings, self.catalog = job, client, settings, catalog
        self.lists = LiveLists.for_client(client)
        self._cache = cache
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.placed: list[dict[str, Any]] = []
        self.in_use: list[str] = []  # MODELS_DIR-relative paths, kept from eviction

    # -- helpers ------------------------------------------------------------------------
    def cache(self) -> Any:
        if self._cache is None:
            self._cache = ModelCache(self.settings, self.catalog)
        return self._cache

    def catalog_entry(self, ref: str, kind: str | None = None) -> Any:
        """The catalog entry for an id / file name / stem (of ``kind`` when given)."""
        if self.catalog is None:
            return None
        try:
            entry = self.catalog.get(ref)
        except Exception:  # noqa: BLE001 - a broken catalog must not hide the real problem
            return None
        if entry is not None and kind is not None and getattr(entry, "kind", kind) != kind:
            return None
        return entry

    def catalog_ids(self, kind: str) -> list[str]:
        if self.catalog is None:
            return []
        try:
            return [e.id for e in self.catalog.entries(kind)]
        except Exception:  # noqa: BLE001
            return []

    def place(self, kind: str, ref: str | Source, fld: str) -> Any | None:
        """Ask the cache to place a model; None (and a problem recorded) when it cannot."""
        try:
            placed = self.cache().ensure(kind, ref_value(ref), in_use=tuple(self.in_use))
        except (ValidationFailed, ModelNotFound, DownloadFailed) as exc:  # reported with every other problem
            self.problems.append(Problem(fld, exc.message, exc.error_type))
            return None
        self.placed.append({"kind": kind, "name": placed.name, "path": placed.path,
                            "downloaded": placed.downloaded, "bytes": placed.bytes})
        return placed

    def after_placing(self, kind: str, name: str, fld: str) -> bool:
        """Refresh A1111's list for ``kind``; True when it now lists ``name``."""
        _, refresh = ROUTES[kind]
        if self._listed(kind, name, fresh=False):  # already there (placed by an earlier job)
            return True
        try:
            self.client.refresh(refresh)
        except A1111Error as exc:  # e.g. a server without that refresh route: the re-read decides
            log.warning("POST /sdapi/v1/refresh-%s failed: %s", refresh, exc.message)
        found = self._listed(kind, name, fresh=True)
        if not found:
            self.problems.append(Problem(
                fld, f"{kind} '{name}' was placed in MODELS_DIR but A1111 does not list it after "
                     f"POST /sdapi/v1/refresh-{refresh}; check that A1111's model folders point at "
                     f"{self.settings.models_dir}", ModelNotFound.error_type))
        return found

    def _listed(self, kind: str, name: str, *, fresh: bool) -> bool:
        if kind == "checkpoint":
            return find_checkpoint(name, self.lists.checkpoints(fresh=fresh)) is not None
        if kind == "lora":
            return find_lora(name, self.lists.loras(fresh=fresh)) is not None
        return find_embedding(name, self.lists.embeddings(fresh=fresh)) is not None

    def unknown(self, kind: str, fld: str, name: str, listed: list[str], reason: str = "") -> None:
        candidates = listed + [i for i in self.catalog_ids(kind) if i not in listed]
        msg = f"unknown {kind} '{name}'; {_did_you_mean(name, candidates)}"
        if reason:
            msg += f" ({reason})"
        self.problems.append(Problem(fld, msg, ModelNotFound.error_type,
                                     hints={"suggestions": suggest(name, candidates)}))

    # -- checkpoint -----------------------------------------------------------------------
    def checkpoint(self) -> tuple[str, str] | None:
        ref = self.job.checkpoint
        if ref is None:
            return self.default_checkpoint()
        if isinstance(ref, str):
            found = self._listed_checkpoint(ref)
            if found:
                return found
        placed = self._place_or_unknown("checkpoint", ref, "checkpoint",
                                        [_stem(e) for e in self.lists.checkpoints()])
        if placed is None or not self.after_placing("checkpoint", placed.name, "checkpoint"):
            return None
        entry = find_checkpoint(placed.name, self.lists.checkpoints())
        return (str(entry["title"]), _stem(entry)) if entry else None

    def _listed_checkpoint(self, ref: str, *, reread: bool = True) -> tuple[str, str] | None:
        names = [ref]
        entry = self.catalog_entry(ref, "checkpoint")
        if entry is not None:
            names.insert(0, Path(entry.file).name)
        for fresh in (False, True) if reread else (False,):
            listed = self.lists.checkpoints(fresh=fresh)
            for n in names:
                found = find_checkpoint(n, listed)
                if found is not None:
                    return str(found["title"]), _stem(found)
        return None

    def _place_or_unknown(self, kind: str, ref: str | Source, fld: str, listed: list[str]) -> Any | None:
        before = len(self.problems)
        placed = self.place(kind, ref, fld)
        if placed is None and isinstance(ref, str) and self.catalog_entry(ref, kind) is None and all(
                p.error_type == ModelNotFound.error_type for p in self.problems[before:]):
            # A plain name nobody knows: the useful message is the suggestion, not the cache's.
            del self.problems[before:]
            self.unknown(kind, fld, ref, listed)
        return placed

    def default_checkpoint(self) -> tuple[str, str] | None:
        entry = None
        if self.catalog is not None:
            try:
                entry = self.catalog.default_checkpoint(self.settings.backend)
            except Exception:  # noqa: BLE001
                entry = None
        if entry is not None:
            # Cached list only: a default that is absent stays absent until placed (then
            # find_local sees it and the list is refreshed), so no re-read for every job.
            found = self._listed_checkpoint(entry.id, reread=False)
            if found:
                return found
            local = None
            try:
                local = self.cache().find_local("checkpoint", entry.id)
            except WorkerError:
                local = None
            if local is not None and self.after_placing("checkpoint", local.name, "checkpoint"):
                return self._listed_checkpoint(local.name)
        loaded = self.lists.loaded
        if loaded is None:
            try:
                options = self.client.get("/sdapi/v1/options")
                loaded = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
            except A1111Error:
                loaded = None
        listed = self.lists.checkpoints()
        found = find_checkpoint(str(loaded), listed) if loaded else None
        if found is None and listed:
            found = listed[0]
        if found is None:
            self.problems.append(Problem("checkpoint", "no checkpoint is available on this worker; name one in "
                                         "'checkpoint' (catalog id or {hf|civitai|url} source) or prefetch one",
                                         ModelNotFound.error_type))
            return None
        if entry is not None:
            self.warnings.append(f"no checkpoint given and the catalog default '{entry.id}' is not on this worker; "
                                 f"used the loaded checkpoint '{found['title']}' (name a checkpoint to choose, or "
                                 "prefetch the default)")
        return str(found["title"]), _stem(found)

    def checkpoint_family(self, title: str, stem: str) -> str | None:
        if title in self.lists.families:
            return self.lists.families[title]
        family = None
        for key in (title, _strip_hash(title), stem):
            entry = self.catalog_entry(key, "checkpoint")
            if entry is not None and getattr(entry, "family", None):
                family = entry.family
                break
        if family is None:
            family = _family_from_file(self.settings.models_dir, _strip_hash(title))
        self.lists.families[title] = family
        return family

    def _find_listed(self, ref: str, kind: str, read: Callable[..., Any],
                     find: Callable[[str, Any], Any]) -> tuple[Any, Any]:
        """(catalog entry or None, A1111's match or None) for a name or catalog id; the list is
        read again once on a miss, since A1111 may have been given the file meanwhile."""
        entry = self.catalog_entry(ref, kind)
        names = ([Path(entry.file).stem] if entry is not None else []) + [ref]
        for fresh in (False, True):
            listed = read(fresh=fresh)
            hit = next((h for n in names if (h := find(n, listed)) is not None), None)
            if hit is not None:
                return entry, hit
        return entry, None

    # -- LoRAs -----------------------------------------------------------------------------
    def loras(self, family: str | None, checkpoint: str) -> list[ResolvedLora]:
        out: list[ResolvedLora] = []
        for ref, weight, fld in self.job.lora_refs():
            entry = None
            listed_entry = None
            if isinstance(ref, str):
                entry, listed_entry = self._find_listed(ref, "lora", self.lists.loras, find_lora)
            if listed_entry is None:
                placed = self._place_or_unknown("lora", ref, fld, [str(e.get("name")) for e in self.lists.loras()])
                if placed is None or not self.after_placing("lora", placed.name, fld):
                    continue
                listed_entry = find_lora(placed.name, self.lists.loras())
                if listed_entry is None:
                    continue
                entry = entry or self.catalog_entry(placed.name, "lora")
            name = str(listed_entry.get("name"))
            entry = entry or self.catalog_entry(name, "lora")
            if weight is None:
                rec = getattr(entry, "recommended_weight", None) if entry is not None else None
                weight = float(rec) if rec is not None else 1.0
            lora_family = (getattr(entry, "family", None) if entry is not None else None) \
                or lora_family_from_metadata(listed_entry.get("metadata"))
            if family and lora_family and lora_family != family:
                base = (listed_entry.get("metadata") or {}).get("ss_base_model_version")
                why = f" (ss_base_model_version {base})" if base else ""
                self.problems.append(Problem(
                    fld, f"LoRA '{name}' was made for {family_label(lora_family)}{why} but checkpoint "
                         f"'{checkpoint}' is {family_label(family)}; A1111 would run it without a useful "
                         f"effect. Use a {family_label(family)} LoRA or a {family_label(lora_family)} checkpoint"))
                continue
            if "<" in name or ">" in name or ":" in name:
                self.problems.append(Problem(fld, f"LoRA '{name}' cannot be used in a prompt tag: its file name "
                                                  "contains ':', '<' or '>'; rename the file"))
                continue
            self.in_use.append(_relative("lora", str(listed_entry.get("path") or name + ".safetensors")))
            out.append(ResolvedLora(name=name, weight=float(weight), family=lora_family))
        return out

    # -- embeddings -------------------------------------------------------------------------
    def embeddings(self, family: str | None) -> list[str]:
        out: list[str] = []
        for i, ref in enumerate(self.job.embeddings):
            fld = f"embeddings[{i}]"
            key = None
            if isinstance(ref, str):
                _, key = self._find_listed(ref, "embedding", self.lists.embeddings, find_embedding)
            if key is None:
                placed = self._place_or_unknown("embedding", ref, fld, list(self.lists.embeddings()))
                if placed is None or not self.after_placing("embedding", placed.name, fld):
                    continue
                key = find_embedding(placed.name, self.lists.embeddings())
                if key is None:
                    continue
            info = self.lists.embeddings().get(key, {})
            emb_family = EMBEDDING_WIDTH.get(info.get("shape")) if isinstance(info.get("shape"), int) else None
            if family and emb_family and emb_family != family:
                self.problems.append(Problem(
                    fld, f"embedding '{key}' is for {family_label(emb_family)} (width {info.get('shape')}) "
                         f"but the checkpoint is {family_label(family)}; A1111 skips it silently"))
                continue
            text = f"{self.job.prompt or ''}\n{self.job.negative_prompt}".lower()
            if self.job.preset is None and key.lower() not in text:
                self.warnings.append(f"embedding '{key}' is available but its name does not appear in the "
                                     "prompt or negative_prompt, so it has no effect")
            self.in_use.append(_relative("embedding", key + ".safetensors"))
            out.append(key)
        return out

    # -- escape hatch -----------------------------------------------------------------------
    def check_a1111_fields(self) -> None:
        extra = self.job.a1111 or {}
        if not extra:
            return
        try:
            schema_doc = self.lists.openapi()
        except WorkerError as exc:
            self.problems.append(Problem("a1111", f"cannot check a1111 fields: {exc.message}"))
            return
        schema = (schema_doc.get("components") or {}).get("schemas", {}).get(TXT2IMG_SCHEMA)
        if not isinstance(schema, dict):
            self.problems.append(Problem("a1111", "A1111's /openapi.json has no txt2img schema; "
                                                  "the a1111 fields cannot be checked"))
            return
        props = schema.get("properties") or {}
        from jsonschema import Draft4Validator, Draft202012Validator  # only needed for the escape hatch
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4, DRAFT202012

        # OpenAPI 3.0 (A1111) schemas follow draft 4, where 0.0 is not an "integer"; 3.1 (Forge) is 2020-12.
        modern = str(schema_doc.get("openapi", "")).startswith("3.1")
        validator_cls = Draft202012Validator if modern else Draft4Validator
        # Each property is validated through a $ref into the whole document, so any "#/components/..."
        # reference inside it resolves.
        uri = "urn:a1111-openapi"
        registry = Registry().with_resource(uri, Resource(contents=schema_doc, specification=(
            DRAFT202012 if modern else DRAFT4)))
        for key, value in extra.items():
            fld = f"a1111.{key}"
            if key not in props:
                self.problems.append(Problem(fld, f"'{key[:60]}' is not an A1111 txt2img field; "
                                                  f"{_did_you_mean(key, sorted(props))}"))
                continue
            pointer = f"#/components/schemas/{TXT2IMG_SCHEMA}/properties/{key}"
            validator = validator_cls({"$ref": uri + pointer}, registry=registry)
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
            if errors:
                self.problems.append(Problem(fld, f"a1111.{key}: {errors[0].message[:200]}"))


def _relative(kind: str, path: str) -> str:
    """The MODELS_DIR-relative path the cache records a model under (``loras/x.safetensors``)."""
    return f"{KIND_DIRS[kind]}/{PurePosixPath(path.replace(chr(92), '/')).name}"


def _stem(entry: dict) -> str:
    name = str(entry.get("model_name") or "")
    if name:
        return PurePosixPath(name).name
    return PurePosixPath(_strip_hash(str(entry.get("title") or ""))).stem


def _family_from_file(models_dir: Path, relative: str) -> str | None:
    """The checkpoint family from its safetensors header, when the file is on our volume."""
    try:
        root = Path(models_dir).resolve() / "checkpoints"
        path = (root / relative).resolve()
        if root not in path.parents or not path.is_file() or path.suffix != ".safetensors":
            return None
    except (OSError, ValueError):
        return None
    try:
        return model_family(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable header only means "unknown family"
        log.debug("cannot read the family of %s: %s", relative, exc)
        return None


def resolve(job: Job, client: Any, settings: Any, catalog: Any = None, *, cache: Any = None,
            extra_problems: list[Problem] | None = None) -> Resolved:
    """Resolve every name of a txt2img job; raise one error listing every problem.

    ``extra_problems`` (e.g. from check_extension_names) are reported together with ours.
    The error is ModelNotFound when every problem is a missing model, DownloadFailed when the
    rest are failed downloads, else ValidationFailed (bad input comes first).
    """
    r = _Resolver(job, client, settings, catalog, cache)
    lists = r.lists
    sampler, scheduler, problems = resolve_sampler(job.sampler_name, job.scheduler,
                                                   lists.samplers(), lists.schedulers())
    if any(p.field == "sampler_name" for p in problems):  # a new sampler may have appeared
        sampler, scheduler, problems = resolve_sampler(job.sampler_name, job.scheduler,
                                                       lists.samplers(fresh=True), lists.schedulers(fresh=True))
    r.problems.extend(problems)
    ckpt = r.checkpoint()
    title, stem = ckpt if ckpt else ("", "")
    family = r.checkpoint_family(title, stem) if ckpt else None
    if ckpt:
        r.in_use.append(_relative("checkpoint", _strip_hash(title)))
    loras = r.loras(family, title)
    embeddings = r.embeddings(family)
    r.check_a1111_fields()
    all_problems = r.problems + list(extra_problems or [])
    if all_problems:
        raise problems_error(all_problems)
    lists.loaded = title
    return Resolved(checkpoint=title, checkpoint_name=stem, family=family, sampler=sampler, scheduler=scheduler,
                    loras=loras, embeddings=embeddings, warnings=r.warnings, placed=r.placed)
