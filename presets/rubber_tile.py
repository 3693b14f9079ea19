"""The rubber-tile generator (``preset: "rubber_tile"``).

Two SDXL generations with the same seed (a 512x512 preview and a 1024x1024 final), the
rubber-tile LoRA at 0.7 and its textual inversion triggered by name, DPM++ 2M with Karras,
plus a colour map drawn here. A non-zero angle adds a ControlNet unit whose control image
(the tile joints at that angle) is drawn here too.
"""

from __future__ import annotations

from typing import Any

from presets import drawing
from presets._jobs import a1111_name, caller_set, concrete_seed, preset_config, rebuild
from schemas.errors import Problem, problems_error
from schemas.presets import COLOR_RGB

NAME = "rubber_tile"
# quality -> (preview steps, final steps, cfg)
PROFILES: dict[str, tuple[int, int, float]] = {
    "preview": (35, 40, 6.5),
    "standard": (35, 50, 6.5),
    "high": (40, 60, 6.0),
}
PREVIEW_SIZE = 512
FINAL_SIZE = 1024
PROMPT_TAIL = "photorealistic rubber tile, high quality, detailed texture"
NEGATIVE_PROMPT = ("object, blurry, worst quality, low quality, deformed, watermark, 3d render, cartoon, "
                   "abstract, smooth, flat")

# Overridable from models.json ``presets.rubber_tile``. Model values are catalog ids (or
# file stems); the ControlNet models are SDXL ones, matching the SDXL checkpoint.
DEFAULTS: dict[str, Any] = {
    "checkpoint": "sd_xl_base_1.0",
    "lora": "rubber-tile-lora-v4_sdxl_lora",
    "lora_weight": 0.7,
    "embedding": "rubber_tile_sdxl",
    "trigger_word": "ohwx_rubber_tile",
    "sampler_name": "DPM++ 2M",
    "scheduler": "Karras",
    "controlnet": {
        # "pidinet" is the module list's name for the SoftEdge PiDiNet preprocessor
        # (the control-type menu shows it as softedge_pidinet).
        "softedge": {"module": "pidinet", "model": "controlnet_softedge_sdxl"},
        "canny": {"module": "canny", "model": "controlnet_canny_sdxl"},
        "weight": 0.6,
        "guidance_end": 0.8,
    },
}
# Fields the preset decides per step; setting them would contradict the preview/final pair.
FIXED_FIELDS = ("width", "height", "steps")


def control_kind(angle: int) -> str | None:
    """None for angle 0 (and 180, the same joints); else the ControlNet type of the nearest
    of 45 / 90 / 135 degrees: 90 is Canny, 45 and 135 are SoftEdge."""
    a = angle % 180
    if a == 0:
        return None
    nearest = min((45, 90, 135), key=lambda x: abs(a - x))
    return "canny" if nearest == 90 else "softedge"


def color_phrase(colors: list[Any]) -> str:
    return ", ".join(f"{c.proportion}% {c.name}" for c in colors)


def build_prompt(job: Any, trigger_word: str, ti_trigger: str) -> str:
    # Spaces around the TI name: a run of punctuation glued to it would change its CLIP
    # tokens, and A1111 would no longer see the embedding's name.
    prompt = f"{trigger_word} {ti_trigger}, {color_phrase(job.colors)}, {PROMPT_TAIL}"
    if "prompt" in caller_set(job) and job.prompt:
        prompt += f", {job.prompt}"
    return prompt


def _loras(job: Any, name: str, weight: float) -> list[dict[str, Any]]:
    loras: list[dict[str, Any]] = [{"name": name, "weight": weight}]
    for ref in (getattr(job, "loras", None) or []) if "loras" in caller_set(job) else []:
        item = ref.model_dump(exclude_unset=True, by_alias=False) if hasattr(ref, "model_dump") else dict(ref)
        if item.get("name") == name:  # the caller re-weights the preset's own LoRA
            loras[0] = item
        else:
            loras.append(item)
    return loras


def _control_unit(cfg: dict[str, Any], catalog: Any, kind: str, angle: int, size: int) -> dict[str, Any]:
    cn = cfg["controlnet"]
    image = drawing.png_base64(drawing.tile_joints(angle, size, size))
    return {
        "module": cn[kind]["module"],
        "model": a1111_name(catalog, cn[kind]["model"]),
        "image": image,
        "weight": cn.get("weight", 1.0),
        "guidance_start": cn.get("guidance_start", 0.0),
        "guidance_end": cn.get("guidance_end", 1.0),
        "resize_mode": "Just Resize",
    }


def expand(job: Any, catalog: Any, settings: Any) -> list[tuple[str, Any]]:
    given = caller_set(job)
    fixed = [f for f in FIXED_FIELDS if f in given]
    if fixed:
        raise problems_error(
            [Problem(f, "fixed by preset rubber_tile") for f in fixed],
            message=f"{', '.join(fixed)} cannot be set with preset 'rubber_tile': it generates a "
                    f"{PREVIEW_SIZE}x{PREVIEW_SIZE} preview and a {FINAL_SIZE}x{FINAL_SIZE} final image, with steps "
                    f"from quality (preview, standard, high)")
    cfg = preset_config(catalog, NAME, DEFAULTS)
    quality = getattr(job, "quality", None) or "standard"
    preview_steps, final_steps, cfg_scale = PROFILES[quality]
    angle = getattr(job, "angle", None) or 0
    kind = control_kind(angle)
    common: dict[str, Any] = {
        "prompt": build_prompt(job, cfg["trigger_word"], a1111_name(catalog, cfg["embedding"])),
        "loras": _loras(job, cfg["lora"], float(cfg["lora_weight"])),
        "embeddings": [cfg["embedding"]],
        "seed": concrete_seed(job),
    }
    # Caller's fields win over these defaults.
    for field, value in (("negative_prompt", NEGATIVE_PROMPT), ("checkpoint", cfg["checkpoint"]),
                         ("sampler_name", cfg["sampler_name"]), ("scheduler", cfg["scheduler"]),
                         ("cfg_scale", cfg_scale)):
        if field not in given:
            common[field] = value
    steps = []
    for label, size, n_steps in (("preview", PREVIEW_SIZE, preview_steps), ("final", FINAL_SIZE, final_steps)):
        values = {**common, "width": size, "height": size, "steps": n_steps}
        if kind is not None:
            own = [u.model_dump(by_alias=False) for u in (getattr(job, "controlnet", None) or [])]
            values["controlnet"] = [_control_unit(cfg, catalog, kind, angle, size), *own]
        steps.append((label, rebuild(job, values)))
    return steps


def color_map_png(job: Any) -> str:
    """The colour map as base64 PNG: one swatch per colour, widths proportional."""
    colors = [(c.name, c.proportion, COLOR_RGB[c.name]) for c in job.colors]
    return drawing.png_base64(drawing.color_map(colors))
