"""Resolve every name a job uses against what the live A1111 lists, before generation.

A1111 silently ignores an unknown LoRA tag, an unknown sampler (it becomes DPM++ 2M), an
unknown scheduler and an unknown override checkpoint; an SD1.5 LoRA on an SDXL checkpoint
answers 200 and does nothing useful (recordings ``txt2img_lora_unknown``,
``txt2img_sampler_unknown``, ``txt2img_override_checkpoint_unknown``,
``sdxl_txt2img_sd15_lora_mismatch``). So every name is checked here, with close-match
suggestions, and models A1111 does not list are placed by the cache, after which A1111's
list is refreshed and checked again. Every problem found is reported in one error.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from a1111.extension_names import check_extension_names
from a1111.hatch import hatch_problems, list_names, option_defaults
from a1111.lists import MODEL_LISTS
from a1111.matching import (
    EMBEDDING_WIDTH,
    checkpoint_stem,
    family_label,
    find_checkpoint,
    find_embedding,
    find_lora,
    resolve_sampler,
    strip_hash,
    unknown,
)
from a1111.openapi import a1111_field_problems
from a1111.placing import JobModels
from a1111.resolved import Resolved, ResolvedLora
from a1111.start_only import StartOnly
from a1111.state import state_for
from cache import KIND_DIRS
from cache.inspect import family_from_metadata, model_family
from schemas.errors import A1111Error, ModelNotFound, Problem, ValidationFailed, WorkerError, problems_error
from schemas.job import Job, Source

log = logging.getLogger(__name__)

EMPTY_PROMPT_WARNING = "prompt is empty: A1111 generates an image without a text condition"


class _Resolver:
    """One job's name resolution: the problems found and warnings given so far."""

    def __init__(self, job: Job, settings: Any, catalog: Any, cache: Any) -> None:
        self.job, self.settings, self.catalog = job, settings, catalog
        state = state_for(settings)
        self.client, self.lists = state.client, state.lists
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.models = JobModels(settings, catalog, cache, self.problems)

    def after_placing(self, kind: str, name: str, fld: str) -> bool:
        """Refresh A1111's list for ``kind``; True when it now lists ``name``."""
        if self.lists.find(kind, name) is not None:  # already there (placed by an earlier job)
            return True
        try:
            self.lists.refresh(kind)
        except A1111Error as exc:  # e.g. a server without that refresh route: the re-read decides
            log.warning("POST /sdapi/v1/refresh-%s failed: %s", MODEL_LISTS[kind].refresh, exc.message)
        if self.lists.find(kind, name, fresh=True) is not None:
            return True
        self.problems.append(Problem(
            fld, f"{kind} '{name}' was placed in MODELS_DIR but A1111 does not list it after "
                 f"POST /sdapi/v1/refresh-{MODEL_LISTS[kind].refresh}; check that A1111's model folders point at "
                 f"{self.settings.models_dir}", ModelNotFound.error_type))
        return False

    def unknown(self, kind: str, fld: str, name: str, listed: list[str]) -> None:
        candidates = listed + [i for i in self.models.ids(kind) if i not in listed]
        self.problems.append(unknown(fld, kind, name, candidates, error_type=ModelNotFound.error_type))

    def place_or_unknown(self, kind: str, ref: str | Source, fld: str, listed: list[str]) -> Any | None:
        before = len(self.problems)
        placed = self.models.place(kind, ref, fld)
        if placed is None and isinstance(ref, str) and self.models.entry(ref, kind) is None and all(
                p.error_type == ModelNotFound.error_type for p in self.problems[before:]):
            # A plain name nobody knows: the useful message is the suggestion, not the cache's.
            del self.problems[before:]
            self.unknown(kind, fld, ref, listed)
        return placed

    def find_listed(self, ref: str, kind: str) -> tuple[Any, Any]:
        """(catalog entry or None, A1111's match or None) for a name or catalog id; the list is
        read again once on a miss, since A1111 may have been given the file meanwhile."""
        entry = self.models.entry(ref, kind)
        names = ([Path(entry.file).stem] if entry is not None else []) + [ref]
        find = MODEL_LISTS[kind].find
        for fresh in (False, True):
            listed = self.lists.models(kind, fresh=fresh)
            hit = next((h for n in names if (h := find(n, listed)) is not None), None)
            if hit is not None:
                return entry, hit
        return entry, None

    # -- checkpoint -----------------------------------------------------------------------
    def checkpoint(self) -> tuple[str, str] | None:
        ref = self.job.checkpoint
        if ref is None:
            return self.default_checkpoint()
        if isinstance(ref, str):
            found = self.listed_checkpoint(ref)
            if found:
                return found
        placed = self.place_or_unknown("checkpoint", ref, "checkpoint",
                                       [checkpoint_stem(e) for e in self.lists.checkpoints()])
        if placed is None or not self.after_placing("checkpoint", placed.name, "checkpoint"):
            return None
        entry = find_checkpoint(placed.name, self.lists.checkpoints())
        return (str(entry["title"]), checkpoint_stem(entry)) if entry else None

    def listed_checkpoint(self, ref: str, *, reread: bool = True) -> tuple[str, str] | None:
        names = [ref]
        entry = self.models.entry(ref, "checkpoint")
        if entry is not None:
            names.insert(0, Path(entry.file).name)
        for fresh in (False, True) if reread else (False,):
            listed = self.lists.checkpoints(fresh=fresh)
            for n in names:
                found = find_checkpoint(n, listed)
                if found is not None:
                    return str(found["title"]), checkpoint_stem(found)
        return None

    def default_checkpoint(self) -> tuple[str, str] | None:
        entry = None
        if self.catalog is not None:
            try:
                entry = self.catalog.default_checkpoint(self.settings.backend)
            except Exception:  # noqa: BLE001
                entry = None
        if entry is not None:
            found = self.catalog_default(entry)
            if found:
                return found
        found = self.loaded_checkpoint()
        if found is None:
            self.problems.append(Problem("checkpoint", "no checkpoint is available on this worker; name one in "
                                         "'checkpoint' (catalog id or {hf|civitai|url} source) or prefetch one",
                                         ModelNotFound.error_type))
            return None
        if entry is not None:
            self.warnings.append(f"no checkpoint given and the catalog default '{entry.id}' is not on this worker; "
                                 f"used the loaded checkpoint '{found['title']}' (name a checkpoint to choose, or "
                                 "prefetch the default)")
        return str(found["title"]), checkpoint_stem(found)

    def catalog_default(self, entry: Any) -> tuple[str, str] | None:
        """The catalog's default checkpoint when A1111 lists it or it is on the volume."""
        # Cached list only: a default that is absent stays absent until placed (then
        # find_local sees it and the list is refreshed), so no re-read for every job.
        found = self.listed_checkpoint(entry.id, reread=False)
        if found:
            return found
        try:
            local = self.models.cache().find_local("checkpoint", entry.id)
        except WorkerError:
            local = None
        if local is not None and self.after_placing("checkpoint", local.name, "checkpoint"):
            return self.listed_checkpoint(local.name)
        return None

    def loaded_checkpoint(self) -> dict | None:
        """The listed entry of the checkpoint A1111 has loaded, else the first it lists."""
        loaded = self.lists.loaded
        if loaded is None:
            try:
                options = self.client.get("/sdapi/v1/options")
                loaded = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
            except A1111Error:
                loaded = None
        listed = self.lists.checkpoints()
        found = find_checkpoint(str(loaded), listed) if loaded else None
        return found if found is not None or not listed else listed[0]

    def checkpoint_family(self, title: str, stem: str) -> str | None:
        if title in self.lists.families:
            return self.lists.families[title]
        family = None
        for key in (title, strip_hash(title), stem):
            entry = self.models.entry(key, "checkpoint")
            if entry is not None and getattr(entry, "family", None):
                family = entry.family
                break
        if family is None:
            family = _family_from_file(self.settings.models_dir, strip_hash(title))
        self.lists.families[title] = family
        return family

    # -- LoRAs -----------------------------------------------------------------------------
    def loras(self, family: str | None, checkpoint: str) -> list[ResolvedLora]:
        out: list[ResolvedLora] = []
        for ref, weight, fld in self.job.lora_refs():
            entry, listed_entry = self.listed_lora(ref, fld)
            if listed_entry is None:
                continue
            name = str(listed_entry.get("name"))
            entry = entry or self.models.entry(name, "lora")
            if weight is None:
                rec = getattr(entry, "recommended_weight", None) if entry is not None else None
                weight = float(rec) if rec is not None else 1.0
            lora_family = (getattr(entry, "family", None) if entry is not None else None) \
                or family_from_metadata(listed_entry.get("metadata"))
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
            listed_path = listed_entry.get("path")
            self.models.use("lora", name, _relative("lora", str(listed_path or name + ".safetensors")),
                            str(listed_path) if listed_path else None)
            out.append(ResolvedLora(name=name, weight=float(weight), family=lora_family))
        return out

    def listed_lora(self, ref: str | Source, fld: str) -> tuple[Any, dict | None]:
        """(catalog entry or None, A1111's entry or None) for a LoRA, placed by the cache if need be."""
        entry = None
        if isinstance(ref, str):
            entry, listed_entry = self.find_listed(ref, "lora")
            if listed_entry is not None:
                return entry, listed_entry
        placed = self.place_or_unknown("lora", ref, fld, [str(e.get("name")) for e in self.lists.loras()])
        if placed is None or not self.after_placing("lora", placed.name, fld):
            return entry, None
        return entry or self.models.entry(placed.name, "lora"), find_lora(placed.name, self.lists.loras())

    # -- embeddings -------------------------------------------------------------------------
    def embeddings(self, family: str | None) -> list[str]:
        out: list[str] = []
        for i, ref in enumerate(self.job.embeddings):
            fld = f"embeddings[{i}]"
            key = self.listed_embedding(ref, fld)
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
            self.models.use("embedding", key, _relative("embedding", key + ".safetensors"))
            out.append(key)
        return out

    def listed_embedding(self, ref: str | Source, fld: str) -> str | None:
        """The name A1111 lists an embedding under, placed by the cache if need be."""
        if isinstance(ref, str):
            _, key = self.find_listed(ref, "embedding")
            if key is not None:
                return key
        placed = self.place_or_unknown("embedding", ref, fld, list(self.lists.embeddings()))
        if placed is None or not self.after_placing("embedding", placed.name, fld):
            return None
        return find_embedding(placed.name, self.lists.embeddings())

    # -- escape hatch -----------------------------------------------------------------------
    def check_a1111_fields(self) -> dict[str, str]:
        """Check the job's ``a1111`` fields (allow-list, values, this server's schema, the names
        they give); the names as A1111 lists them, by field path."""
        extra = self.job.a1111 or {}
        if not extra:
            return {}
        problems = hatch_problems(extra, self.settings.backend)
        if problems:  # refused keys: nothing more to learn about them from A1111
            self.problems += problems
            return {}
        try:
            doc = self.lists.openapi()
        except WorkerError as exc:
            self.problems.append(Problem("a1111", f"cannot check a1111 fields: {exc.message}"))
            return {}
        self.problems += a1111_field_problems(extra, doc)
        names = {}
        for path, kind, name in list_names(extra):
            found = self.hatch_name(kind, name, f"a1111.{path}")
            if found is not None:
                names[path] = found
        return names

    def hatch_name(self, kind: str, name: str, fld: str) -> str | None:
        """The listed name ``name`` means in A1111's list of ``kind``; a problem when none."""
        for fresh in (False, True):  # read again once on a miss: a file may have been added
            try:
                found, candidates = self.lists.listed_name(kind, name, fresh=fresh)
            except WorkerError as exc:
                found, candidates = None, [f"(A1111's list could not be read: {exc.message[:100]})"]
            if found is not None:
                return found
        error_type = ModelNotFound.error_type if kind in ("checkpoint", "vae") else ValidationFailed.error_type
        problem = unknown(fld, kind, name, candidates, error_type=error_type)
        self.problems.append(replace(problem, message=f"{fld}: {problem.message}"))
        return None

    def option_defaults(self) -> dict[str, Any]:
        """The value stated for each option a job may set (a1111/hatch.py option_defaults)."""
        return option_defaults(self.lists.options(), self.settings.backend)


def _relative(kind: str, path: str) -> str:
    """The MODELS_DIR-relative path the cache records a model under (``loras/x.safetensors``)."""
    return f"{KIND_DIRS[kind]}/{PurePosixPath(path.replace(chr(92), '/')).name}"


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


def resolve(job: Job, settings: Any, catalog: Any = None, *, cache: Any = None) -> Resolved:
    """Resolve every name of a txt2img job, the extensions' names included; raise one error
    listing every problem (see schemas.errors.problems_error for which error it is)."""
    r = _Resolver(job, settings, catalog, cache)
    lists = r.lists
    if not (job.prompt or "").strip():  # A1111 accepts it; the caller may not have meant it
        r.warnings.append(EMPTY_PROMPT_WARNING)
    # Looked up before any other model is placed (a ControlNet model may be placed here), as
    # the handler did when it checked them itself; reported after the other problems.
    extension_problems = check_extension_names(job, r.client, settings.backend,
                                               cache=r.models.cache() if job.controlnet else None,
                                               start_only=StartOnly(catalog, Path(settings.models_dir),
                                                                    settings.backend, settings.allow_pickle_models))
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
        filename = (find_checkpoint(title, lists.checkpoints()) or {}).get("filename")
        r.models.use("checkpoint", stem, _relative("checkpoint", strip_hash(title)),
                     str(filename) if filename else None)
    loras = r.loras(family, title)
    embeddings = r.embeddings(family)
    a1111_names = r.check_a1111_fields()
    all_problems = r.problems + extension_problems
    if all_problems:
        raise problems_error(all_problems)
    lists.loaded = title
    return Resolved(checkpoint=title, checkpoint_name=stem, family=family, sampler=sampler, scheduler=scheduler,
                    loras=loras, embeddings=embeddings, warnings=r.warnings, placed=r.models.placed,
                    uses=r.models.uses, option_defaults=r.option_defaults(), a1111_names=a1111_names)
