"""Match the names a job uses against the entries A1111 lists, with close-match suggestions. PURE.

A1111 itself matches loosely and silently: an unknown sampler becomes DPM++ 2M, an unknown
LoRA tag or checkpoint is ignored. These functions decide what a name means before A1111
sees it, so an unknown one is reported with what the user probably meant.
"""

from __future__ import annotations

import difflib
from pathlib import PurePosixPath

from schemas.errors import Problem, ValidationFailed

FAMILY_NAMES = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
# Embedding width -> the family whose text encoder it fits: SD1.5's CLIP-L is 768 wide,
# SD2's OpenCLIP-H 1024, and SDXL's two encoders together 2048.
EMBEDDING_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
_SHOWN = 12  # candidates listed when none is close


def family_label(family: str | None) -> str:
    return FAMILY_NAMES.get(family or "", family or "unknown")


# --------------------------------------------------------------------------- suggestions
def suggest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name``, ignoring case (as they are spelled in ``candidates``)."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[c] for c in close]


def did_you_mean(name: str, candidates: list[str]) -> str:
    """The tail of an "unknown X" message: the close matches, else what there is to choose from."""
    close = suggest(name, candidates)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    if not candidates:
        return "none are available"
    shown = ", ".join(f"'{c}'" for c in candidates[:_SHOWN])
    return f"available: {shown}{', ...' if len(candidates) > _SHOWN else ''}"


# --------------------------------------------------------------------------- samplers
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
        for text in _scheduler_names(s):
            suffixes.append((text.lower(), str(label)))
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


def _scheduler_names(scheduler: dict) -> list[str]:
    return [str(t) for t in [scheduler.get("label"), scheduler.get("name"), *(scheduler.get("aliases") or [])] if t]


def find_scheduler(name: str, schedulers: list[dict]) -> str | None:
    wanted = name.strip().lower()
    for s in schedulers:
        if any(text.lower() == wanted for text in _scheduler_names(s)):
            return str(s.get("label") or s.get("name"))
    return None


def unknown(fld: str, what: str, name: str, candidates: list[str], *, error_type: str = ValidationFailed.error_type,
            reason: str = "") -> Problem:
    """The problem for a name none of ``candidates`` matches, with the close ones as hints."""
    msg = f"unknown {what} '{name}'; {did_you_mean(name, candidates)}" + (f" ({reason})" if reason else "")
    return Problem(fld, msg, error_type, hints={"suggestions": suggest(name, candidates)})


def legacy_guess(name: str, samplers: list[dict], schedulers: list[dict]) -> str | None:
    """The legacy "<sampler> <scheduler>" name ``name`` was probably meant to be, when it
    starts with a real sampler and ends with a misspelt scheduler ("DPM++ 2M Karas"); the
    longest sampler prefix wins, as in split_sampler."""
    wanted = name.strip().lower()
    labels = [str(s.get("label") or s.get("name")) for s in schedulers]
    for low, sampler in sorted(_sampler_index(samplers).items(), key=lambda x: -len(x[0])):
        if wanted.startswith(low + " "):
            close = suggest(wanted[len(low) + 1:].strip(), labels, n=1)
            if close:
                return f"{sampler} {close[0]}"
    return None


def unknown_sampler(name: str, samplers: list[dict], schedulers: list[dict]) -> Problem:
    """An unknown sampler name, with the legacy combined name it looks like first, then the
    closest sampler names (difflib alone would rank "DPM++ 2M SDE" above 2M + Karras)."""
    names = [str(s.get("name")) for s in samplers]
    guess = legacy_guess(name, samplers, schedulers)
    if guess is None:
        return unknown("sampler_name", "sampler", name, names)
    sampler, scheduler = split_sampler(guess, samplers, schedulers) or (guess, None)
    close = [guess] + [c for c in suggest(name, names) if c != sampler][:2]
    return Problem("sampler_name", f"unknown sampler '{name}'; did you mean '{guess}' (sampler '{sampler}' with "
                                   f"scheduler '{scheduler}')" + "".join(f" or '{c}'" for c in close[1:]) + "?",
                   hints={"suggestions": close})


def resolve_sampler(sampler_name: str | None, scheduler: str | None, samplers: list[dict],
                    schedulers: list[dict]) -> tuple[str, str, list[Problem]]:
    """(sampler, scheduler label, problems)."""
    problems: list[Problem] = []
    sampler, implied = DEFAULT_SAMPLER, None
    if sampler_name is not None:
        split = split_sampler(sampler_name, samplers, schedulers)
        if split is None:
            problems.append(unknown_sampler(sampler_name, samplers, schedulers))
        else:
            sampler, implied = split
    chosen = implied or DEFAULT_SCHEDULER
    if scheduler is not None:
        label = find_scheduler(scheduler, schedulers)
        if label is None:
            labels = [str(s.get("label") or s.get("name")) for s in schedulers]
            problems.append(unknown("scheduler", "scheduler", scheduler, labels))
        elif implied is not None and label != implied:
            problems.append(Problem("scheduler", f"sampler_name '{sampler_name}' already names scheduler "
                                                 f"'{implied}', but scheduler is '{scheduler}'; give one of them"))
        else:
            chosen = label
    return sampler, chosen, problems


# --------------------------------------------------------------------------- models
def strip_hash(title: str) -> str:
    """A checkpoint title without A1111's " [hash]" suffix."""
    return title.rsplit(" [", 1)[0] if title.endswith("]") and " [" in title else title


def checkpoint_stem(entry: dict) -> str:
    """What info.sd_model_name reports for a listed checkpoint."""
    name = str(entry.get("model_name") or "")
    if name:
        return PurePosixPath(name).name
    return PurePosixPath(strip_hash(str(entry.get("title") or ""))).stem


def checkpoint_keys(entry: dict) -> set[str]:
    title = str(entry.get("title") or "")
    keys = {title, strip_hash(title), str(entry.get("model_name") or "")}
    filename = str(entry.get("filename") or "")
    if filename:
        p = PurePosixPath(filename.replace("\\", "/"))
        keys |= {p.name, p.stem}
    bare = PurePosixPath(strip_hash(title))
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


def _without_ext(name: str, exts: tuple[str, ...]) -> str:
    return PurePosixPath(name).stem if name.endswith(exts) else name


def find_lora(name: str, listed: list[dict]) -> dict | None:
    wanted = name.lower()
    names = {wanted, _without_ext(wanted, (".safetensors", ".pt", ".ckpt"))}
    for key in ("name", "alias"):
        for entry in listed:
            if str(entry.get(key, "")).lower() in names:
                return entry
    return None


def find_embedding(name: str, listed: dict[str, dict]) -> str | None:
    wanted = name.lower()
    names = {wanted, _without_ext(wanted, (".safetensors", ".pt", ".bin"))}
    for key in listed:
        if key.lower() in names:
            return key
    return None


# What sd_vae takes besides a listed file: the checkpoint's own / a same-named file, or none.
VAE_CHOICES = ("Automatic", "None")


def find_vae(name: str, listed: list[dict]) -> str | None:
    """The sd_vae value ``name`` means (a listed model_name or one of VAE_CHOICES), or None."""
    for choice in VAE_CHOICES:
        if name.lower() == choice.lower():
            return choice
    wanted = name.lower()
    names = {wanted, _without_ext(wanted, (".safetensors", ".pt", ".ckpt"))}
    for entry in listed:
        model_name = str(entry.get("model_name") or "")
        if model_name.lower() in names or _without_ext(model_name.lower(), (".safetensors", ".pt", ".ckpt")) in names:
            return model_name
    return None


def controlnet_model_listed(name: str, listed: list[str]) -> bool:
    """ControlNet resolves a model by its exact "stem [hash]" title or by the stem,
    case-insensitively (recording ext_txt2img_controlnet_model_by_short_name)."""
    want = name.strip().lower()
    for title in listed:
        t = title.lower()
        if t == want or t.split(" [", 1)[0] == want or t.split(" [", 1)[0] == want.rsplit(".", 1)[0]:
            return True
    return False


def find_upscaler(name: str, listed: list[dict]) -> dict | None:
    """The /sdapi/v1/upscalers entry ``name`` means: its exact name, else the one name that
    matches ignoring case (A1111's extras match the exact name only and fail otherwise)."""
    exact = [e for e in listed if e.get("name") == name]
    if exact:
        return exact[0]
    loose = [e for e in listed if str(e.get("name", "")).lower() == name.lower()]
    return loose[0] if len(loose) == 1 else None
