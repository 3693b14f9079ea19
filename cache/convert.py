"""Format conversion on arrival: SDXL textual inversion from the trainer layout
(``text_encoders_0`` / ``text_encoders_1``) to A1111's (``clip_l`` / ``clip_g``).

A1111 refuses the trainer layout ("embedding file has multiple terms in it") and simply
leaves the file out of its list. Only the tensor names change, so the conversion rewrites
the safetensors header and copies the data bytes untouched: the vectors stay bit-identical
whatever their dtype (bf16 included), and no torch or numpy is needed.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from cache.inspect import safetensors_header

TRAINER_TO_A1111 = {"text_encoders_0": "clip_l", "text_encoders_1": "clip_g"}
WIDTHS = {"clip_l": 768, "clip_g": 1280}


class ConversionError(ValueError):
    pass


def is_trainer_ti(header: dict) -> bool:
    return set(header) - {"__metadata__"} == set(TRAINER_TO_A1111)


def convert_trainer_ti(src: Path, dst: Path) -> None:
    """Write ``dst`` (A1111 SDXL TI layout) from ``src`` (trainer layout)."""
    header = safetensors_header(src)
    if not is_trainer_ti(header):
        found = ", ".join(k for k in header if k != "__metadata__")
        raise ConversionError(f"{src.name} is not an SDXL trainer embedding (expected exactly the tensors "
                              f"{', '.join(TRAINER_TO_A1111)}; found {found})")
    out: dict = {}
    for old, new in TRAINER_TO_A1111.items():
        info = header[old]
        shape = info["shape"]
        if len(shape) != 2 or shape[1] != WIDTHS[new]:
            raise ConversionError(f"{src.name}: {old} has shape {shape}, expected [n, {WIDTHS[new]}] for {new}")
        out[new] = info
    if header["text_encoders_0"]["shape"][0] != header["text_encoders_1"]["shape"][0]:
        raise ConversionError(f"{src.name}: the two encoders have different vector counts")
    meta = dict(header.get("__metadata__") or {})
    meta["converted_from"] = "sdxl_ti_trainer"
    out["__metadata__"] = meta
    raw = json.dumps(out, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the safetensors writer does
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        with open(dst, "wb") as g:
            g.write(struct.pack("<Q", len(raw)))
            g.write(raw)
            shutil.copyfileobj(f, g, 1 << 20)
    safetensors_header(dst)  # the result must be a valid file before anyone renames it into place
