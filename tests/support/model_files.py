"""Real safetensors files made by the tests: the worker reads their headers as it would a
downloaded model's (family, shapes, truncation), so hand-written bytes would test less."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import save

# An SD1.5 UNet layer in kohya's LoRA naming; 320 is its width. The worker reads a LoRA's
# family from the metadata, so the one layer is enough.
_SD15_LORA_LAYER = "lora_unet_down_blocks_0_attentions_0_proj_in"
_SD15_LORA_WIDTH = 320

# An SDXL checkpoint as its header shows it: the second text encoder (OpenCLIP, 1280 wide),
# by which cache/inspect.py tells SDXL, the first one (CLIP-L, 768) and the UNet's input conv.
SDXL_CHECKPOINT_TENSORS: dict[str, tuple[str, list[int]]] = {
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": ("F16", [3840, 1280]),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": ("F16", [49408, 768]),
    "model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 4, 3, 3]),
}

_DTYPE_BYTES = {"F16": 2, "F32": 4}


def safetensors_bytes(tensors: Mapping[str, np.ndarray] | None = None, *, size: int = 64 * 1024, seed: int = 0,
                      metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file of ``tensors``, or of one random float32 tensor of about ``size``
    bytes (``seed`` tells files of one size apart, so their hashes differ)."""
    if tensors is None:
        rng = np.random.default_rng(seed)
        tensors = {"lora_unet_down.weight": rng.standard_normal(max(1, size // 4), dtype=np.float32)}
    return save(dict(tensors), metadata=None if metadata is None else dict(metadata))


def lora_bytes(base_model: str = "sd_v1", *, dim: int = 4, rows: int = _SD15_LORA_WIDTH) -> bytes:
    """A tiny kohya-style LoRA (zeros, rank ``dim``) whose metadata names ``base_model``.

    More ``rows`` make a larger file of the same kind (a download that fills a small disk).
    """
    tensors = {f"{_SD15_LORA_LAYER}.lora_down.weight": np.zeros((dim, rows), np.float16),
               f"{_SD15_LORA_LAYER}.lora_up.weight": np.zeros((rows, dim), np.float16)}
    return safetensors_bytes(tensors, metadata={"ss_base_model_version": base_model, "ss_network_dim": str(dim)})


def write_safetensors_header(path: Path, tensors: Mapping[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file of full-size tensors that costs no disk: the header declares
    the shapes, and the data section is a sparse run of zeros of the size it declares."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = _DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + offset)


def framed_safetensors(header: Mapping | bytes, data: bytes | int = b"") -> bytes:
    """A file in the safetensors framing (8-byte length, JSON header, data) around any header,
    valid or not: the malformed files the header checks must refuse. ``header`` is a mapping
    (dumped as JSON) or the raw header bytes; ``data`` the data section or its size in zeros."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = bytes(data) if isinstance(data, int) else data
    return len(raw).to_bytes(8, "little") + raw + body
