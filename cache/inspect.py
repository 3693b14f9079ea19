"""Read safetensors headers (never the tensors) to check files and tell model families apart.

Only the 8-byte length and the JSON header are read, so this is cheap even for a 7 GB
checkpoint and needs no torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from schemas.messages import got

# A real header is a few MB at most (SDXL checkpoints: ~200 KB); anything larger is not a
# safetensors file (e.g. the first bytes of a pickle or HTML read as a huge length).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Bits per element of every dtype the safetensors format defines (F4 and F6 pack below a byte).
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "C64": 64, "F64": 64, "I64": 64, "U64": 64}
TENSOR_KEYS = ("dtype", "shape", "data_offsets")


class NotSafetensors(ValueError):
    """The file is not a complete, well-formed safetensors file."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys; the loader that reads the file later may not.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise NotSafetensors(f"the safetensors header names {got(key)} twice")
        out[key] = value
    return out


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except NotSafetensors:
        raise
    except RecursionError:  # a real header is three levels deep; this one is thousands
        raise NotSafetensors("the safetensors header is nested too deeply to be one") from None
    # ValueError: JSONDecodeError, and integers past Python's digit limit.
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotSafetensors(f"the safetensors header is not valid JSON ({str(exc)[:200]})") from None


def read_header_bytes(path: Path) -> tuple[dict[str, Any], int]:
    """(parsed header, header length) after checking the framing; raises NotSafetensors."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise NotSafetensors(f"{size} bytes is too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
            start = head[:8].decode("latin-1")
            hint = " (it looks like a JSON/HTML page)" if start.lstrip()[:1] in ("{", "<", "[") else ""
            raise NotSafetensors(f"no safetensors header at the start of the file{hint}")
        raw = f.read(n)
    header = _parse(raw)
    if not isinstance(header, dict):
        raise NotSafetensors("the safetensors header is not a JSON object")
    return header, n


def _count(value: Any) -> bool:
    # bool is an int to Python, not to the format.
    return type(value) is int and value >= 0


def _elements(shape: list[int], limit: int) -> int:
    """The product of ``shape``, or any number above ``limit`` once it is known to exceed it
    (a hostile shape of huge dimensions must not cost a huge multiplication)."""
    if 0 in shape:
        return 0
    n = 1
    for dim in shape:
        n *= dim
        if n > limit:
            break
    return n


def _tensor_span(name: str, info: Any, data_size: int) -> tuple[int, int]:
    """The (begin, end) byte range of one tensor entry, after checking every field of it."""
    shown = f"tensor {got(name)}"
    if not isinstance(info, dict) or not set(TENSOR_KEYS) <= info.keys():
        raise NotSafetensors(f"{shown} is not an object with {', '.join(TENSOR_KEYS)}")
    dtype, shape, offsets = (info[k] for k in TENSOR_KEYS)
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise NotSafetensors(f"{shown}: dtype {got(dtype)} is not a safetensors dtype; allowed: "
                             f"{', '.join(DTYPE_BITS)}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise NotSafetensors(f"{shown}: shape {got(shape)} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise NotSafetensors(f"{shown}: data_offsets {got(offsets)} is not [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    bits = DTYPE_BITS[dtype] * _elements(shape, data_size * 8)
    if bits % 8 or end - begin != bits // 8:
        raise NotSafetensors(f"{shown}: {end - begin} bytes do not match its shape and dtype")
    return begin, end


def safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file ({tensor: {dtype, shape, data_offsets}, "__metadata__"?}),
    checked as strictly as the format is defined; raises NotSafetensors.

    The tensors' byte ranges must fill the rest of the file exactly, one after the other:
    that also catches a truncated download that happens to start with a valid header.
    """
    path = Path(path)
    header, n = read_header_bytes(path)
    data_size = path.stat().st_size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise NotSafetensors("__metadata__ is not an object of string values")
            continue
        spans.append((*_tensor_span(key, info, data_size), key))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            raise NotSafetensors(f"tensor {got(key)} starts at data byte {begin}, not {end}: tensors overlap or "
                                 "leave a gap")
        end = stop
    if end != data_size:
        raise NotSafetensors(f"the header describes {end} data bytes but the file holds {data_size} "
                             "(truncated or padded file)")
    return header


def tensor_names(header: dict[str, Any]) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def family_from_metadata(meta: Any) -> str | None:
    """The base model family named by kohya / modelspec metadata, or None.

    "sd15" | "sd2" | "sdxl" | "sd3" | "flux". Used on a file's ``__metadata__`` and on the
    ``metadata`` A1111 lists for a LoRA, which are the same trainer keys.
    """
    if not isinstance(meta, dict):
        return None
    base = str(meta.get("ss_base_model_version") or "").lower()
    arch = str(meta.get("modelspec.architecture") or "").lower()
    for text in (base, arch):
        if not text:
            continue
        if "flux" in text:
            return "flux"
        if "sdxl" in text or "stable-diffusion-xl" in text:
            return "sdxl"
        if "sd3" in text or "stable-diffusion-3" in text:
            return "sd3"
        if text.startswith("sd_v2") or "stable-diffusion-v2" in text:
            return "sd2"
        if text.startswith("sd_v1") or "stable-diffusion-v1" in text:
            return "sd15"
    return None


def family_from_header(header: dict[str, Any]) -> str | None:
    """"sd15" | "sdxl" | "flux" | None, from trainer metadata, else tensor names and shapes."""
    # The cache reports only the families its catalog knows (catalog.FAMILIES); an SD2/SD3
    # tag is left to the tensor checks below, which answer None for those.
    family = family_from_metadata(header.get("__metadata__"))
    if family in ("sd15", "sdxl", "flux"):
        return family
    names = tensor_names(header)
    keys = set(names)
    # Textual inversion: A1111's SDXL layout, the SDXL trainer layout, or one SD1.x tensor.
    if {"clip_l", "clip_g"} <= keys or {"text_encoders_0", "text_encoders_1"} <= keys:
        return "sdxl"
    if len(names) == 1 or keys <= {"emb_params", "string_to_param", "string_to_token"}:
        shape = header[names[0]].get("shape") if names else None
        if shape and shape[-1] == 768:
            return "sd15"
    for name in names:
        if "double_blocks" in name or name.startswith(("lora_transformer_", "transformer.single_transformer")):
            return "flux"
    for name in names:
        if name.startswith(("conditioner.embedders.1", "lora_te2_")) or "add_embedding" in name \
                or name.startswith("model.diffusion_model.label_emb"):
            return "sdxl"
    for name in names:
        # Cross-attention keys take the text encoder's width: 768 for SD1.x, 2048 for SDXL.
        if "attn2" in name and ("to_k" in name) and name.endswith("lora_down.weight"):
            width = (header[name].get("shape") or [0, 0])[-1]
            return {768: "sd15", 2048: "sdxl"}.get(width)
    for name in names:
        if name.startswith(("cond_stage_model.transformer", "lora_te_", "lora_te1_",
                            "control_model.input_hint_block")):
            return "sd15"
    return None


def model_family(path: Path) -> str | None:
    """The family of a safetensors model file, from its header only; None when unknown.

    Raises NotSafetensors for a file that is not a valid one (its family would be a guess)."""
    return family_from_header(safetensors_header(Path(path)))
