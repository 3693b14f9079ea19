"""Read safetensors headers (never the tensors) to check files and tell model families apart.

Only the 8-byte length and the JSON header are read, so this is cheap even for a 7 GB
checkpoint and needs no torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

# A real header is a few MB at most (SDXL checkpoints: ~200 KB); anything larger is not a
# safetensors file (e.g. the first bytes of a pickle or HTML read as a huge length).
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1}


class NotSafetensors(ValueError):
    """The file is not a complete, well-formed safetensors file."""


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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotSafetensors(f"the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise NotSafetensors("the safetensors header is not a JSON object")
    return header, n


def safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file ({tensor: {dtype, shape, data_offsets}, "__metadata__"?}).

    Also checks that the tensors' byte ranges exactly fill the rest of the file, which
    catches a truncated download that happens to start with a valid header.
    """
    path = Path(path)
    header, n = read_header_bytes(path)
    data_size = path.stat().st_size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict):
                raise NotSafetensors("__metadata__ is not an object")
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise NotSafetensors(f"tensor entry {key!r} lacks dtype/shape/data_offsets")
        start, stop = info["data_offsets"]
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop):
            raise NotSafetensors(f"tensor {key!r} has invalid data_offsets")
        count = 1
        for dim in info["shape"]:
            count *= int(dim)
        width = DTYPE_BYTES.get(str(info["dtype"]))
        if width is not None and info["dtype"] != "F4" and stop - start != count * width:
            raise NotSafetensors(f"tensor {key!r}: {stop - start} bytes do not match its shape and dtype")
        end = max(end, stop)
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
    """The family of a safetensors model file, from its header only; None when unknown."""
    header, _ = read_header_bytes(Path(path))
    return family_from_header(header)
