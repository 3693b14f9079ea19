"""How validation messages show the caller's values and where they are: short, one line,
redacted, and safe for any input (a 10,000-character name, a value nested a thousand levels deep)."""

from __future__ import annotations

import heapq
import itertools
import reprlib
from typing import Any

from schemas.redact import redact


def loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Drop pydantic's internal union / validator tags from the location path.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool",
                                                                                  "list", "dict"})))


def short_error(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    loc = loc_text(clean_loc(tuple(err.get("loc", ()))))
    return f"{loc}: {msg}" if loc else msg


REPR = reprlib.Repr()
REPR.maxlevel, REPR.maxstring, REPR.maxother = 3, 60, 60


# REPR shows a long string's first and last few characters only, so only those ends (with room
# for a credential that starts in them) need the redaction pass: it is linear, but not free.
_ENDS = 2048


def _shown_keys(value: dict[Any, Any]) -> list[Any]:
    # The keys REPR shows (the smallest few), and one more so that it still prints "...".
    try:
        return heapq.nsmallest(REPR.maxdict + 1, value)
    except TypeError:  # keys that do not compare: REPR shows the first few
        return list(itertools.islice(value, REPR.maxdict + 1))


def _redacted(value: Any, depth: int) -> Any:
    """What REPR will show of ``value``, redacted; only as deep as REPR shows (maxlevel):
    deeper levels print as "..." and may be ~1000 deep."""
    if isinstance(value, str):
        return redact(value if len(value) <= 2 * _ENDS else value[:_ENDS] + "\n" + value[-_ENDS:])
    if depth >= REPR.maxlevel:
        return value
    if isinstance(value, dict):
        return {_redacted(k, depth + 1): _redacted(value[k], depth + 1) for k in _shown_keys(value)}
    if isinstance(value, list | tuple):
        items = [_redacted(v, depth + 1) for v in value[:max(REPR.maxlist, REPR.maxtuple) + 1]]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def got(value: Any) -> str:
    # Redacted before it is shortened: reprlib keeps a long string's end, where a ?token= value sits.
    # reprlib, not repr: a value nested ~1000 deep (json.loads allows it) would exhaust the recursion.
    text = REPR.repr(_redacted(value, 0))
    return text if len(text) <= 60 else text[:57] + "..."


def described(value: Any) -> str:
    """What a value is without showing any of it, for fields that carry image data (an
    error is logged and returned, and must hold none of an image)."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with {len(value)} key(s)"
    return got(value)  # a number, a boolean or null holds no image
