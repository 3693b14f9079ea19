"""How validation messages show the caller's values and where they are: short, one line,
and safe for any input (a 10,000-character name, a value nested a thousand levels deep)."""

from __future__ import annotations

import reprlib
from typing import Any


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


def got(value: Any) -> str:
    # reprlib, not repr: a value nested ~1000 deep (json.loads allows it) would exhaust the recursion.
    text = REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
