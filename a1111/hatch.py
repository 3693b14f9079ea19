"""What a job's ``a1111`` escape hatch may set: an allow-list of plain txt2img knobs and of
A1111 options. PURE.

The hatch exists for generation knobs the job schema does not name. Anything else A1111's
txt2img takes reaches past the job's own, checked fields: ``script_name`` runs a script whose
own text sets prompts, steps and sizes; ``infotext`` becomes fields the job did not set;
``alwayson_scripts`` runs extensions with raw arguments; ``save_images`` and the output-folder
options write files on the worker. So every key is refused unless listed here, with the
field named and the job field to use instead where there is one, and every listed value is
checked (type and range here; names of models, samplers and schedulers by the resolver,
against A1111's own lists).

Every option in ``OPTIONS`` is stated in every payload (the job's value, else the worker's
default: see ``option_defaults``), because the worker sends
``override_settings_restore_afterwards: false`` and A1111 keeps an overridden option for
every later job, possibly another caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from a1111.matching import did_you_mean
from schemas.errors import Problem
from schemas.job import MAX_PROMPT, SEED_MAX, extra_network_problem
from schemas.messages import got

BOTH = frozenset({"a1111", "forge"})
MAX_HATCH_KEYS = 32       # top-level a1111 keys; the allow-list has fewer, so more is never a real job
MAX_OVERRIDE_KEYS = 32    # a1111.override_settings keys, likewise
MAX_NAME = 300
# Kinds whose value is a name the resolver checks against one of A1111's lists.
LIST_KINDS = ("checkpoint", "vae", "sampler", "scheduler")

# txt2img fields the job sets through its own fields: the escape hatch may not override them.
JOB_OWNED = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "sampler_name": "sampler_name",
    "sampler_index": "sampler_name", "scheduler": "scheduler", "steps": "steps", "cfg_scale": "cfg_scale",
    "width": "width", "height": "height", "seed": "seed", "batch_size": "batch_size", "n_iter": "n_iter",
    "distilled_cfg_scale": "distilled_cfg_scale", "enable_hr": "hires", "hr_scale": "hires",
    "hr_upscaler": "hires", "hr_second_pass_steps": "hires", "denoising_strength": "hires or denoising_strength",
    "hr_cfg": "hires", "hr_distilled_cfg": "hires", "hr_additional_modules": "hires",
    "hr_resize_x": "hires", "hr_resize_y": "hires",
    # img2img's own fields are the job's (schemas/images.py), never the escape hatch's
    "init_images": "init_images", "mask": "mask", "resize_mode": "resize_mode", "mask_blur": "mask_blur",
    "inpainting_fill": "inpainting_fill", "inpaint_full_res": "inpaint_full_res",
    "inpaint_full_res_padding": "inpaint_full_res_padding", "inpainting_mask_invert": "inpainting_mask_invert",
}
OVERRIDE_OWNED = {
    "sd_model_checkpoint": "checkpoint", "CLIP_stop_at_last_layers": "clip_skip",
    "sdxl_clip_l_skip": "clip_skip", "forge_additional_modules": "modules",
}
WORKER_OWNED = {
    "override_settings_restore_afterwards": "the worker states every override, so nothing needs restoring",
    "send_images": "the worker returns the images",
    "save_images": "it writes files on the worker and can put a grid image first",
}
# txt2img fields refused outright: why, and what to use instead.
REFUSED = {
    "script_name": "a script takes prompts, steps and sizes from its own arguments, past every check of the job",
    "script_args": "a script takes prompts, steps and sizes from its own arguments, past every check of the job",
    "alwayson_scripts": "extensions get only the arguments the worker builds; use the job fields 'adetailer' "
                        "and 'controlnet'",
    "infotext": "A1111 turns it into generation fields the job did not set; use the job's own fields",
    "styles": "saved styles add prompt text (and LoRA tags) the job did not send; put the text in 'prompt'",
    "comments": "they go into the image's infotext, which the worker does not let a job write",
    "disable_extra_networks": "it would silently drop the job's 'loras'; leave 'loras' empty instead",
    "firstpass_image": "the worker generates the first pass itself",
    "force_task_id": "the task id is A1111's name for a job in its queue; the worker does not let one job "
                     "take another's",
    "firstphase_width": "A1111 ignores it since v1.0; use 'hires'",
    "firstphase_height": "A1111 ignores it since v1.0; use 'hires'",
}
# Options refused with their own reason (any other unlisted option gets the generic one).
REFUSED_OPTIONS = {
    "sd_hypernetwork": "hypernetworks are not supported",
    "sd_lora": "LoRAs go in 'loras' ({name, weight -5..5}), where they are checked",
    "face_restoration_model": "the worker keeps A1111's face restorer; 'restore_faces' and "
                              "'code_former_weight' are allowed",
}
_FILE_OPTION_HINTS = ("outdir", "save", "samples_", "grid_", "directories_", "temp_dir", "filename")


@dataclass(frozen=True)
class Knob:
    """One value a job may set: its kind, bounds and the one-line reason it is allowed."""

    kind: str                                  # "bool" | "int" | "number" | "choice" | "text" | a LIST_KINDS kind
    reason: str
    low: float | None = None
    high: float | None = None
    off: tuple[int, ...] = ()                  # values outside low..high that mean "off"
    choices: tuple[str, ...] = ()
    default: Any = None                        # options: A1111 v1.10.1's default (the recorded get_options)
    backends: frozenset[str] = BOTH

    def allowed(self) -> str:
        """What the knob takes, in the words the error messages use."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(f"'{c}'" for c in self.choices)
        if self.kind == "text":
            return f"a string of at most {MAX_PROMPT} characters without extra-network tags"
        if self.kind in LIST_KINDS:
            return f"a {self.kind} name A1111 lists"
        what = "an integer" if self.kind == "int" else "a number"
        off = " or ".join(str(v) for v in self.off)
        return f"{what} from {_num(self.low)} to {_num(self.high)}" + (f" (or {off} for off)" if off else "")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind in ("int", "number"):
            ok = _in_range(self, value)
        elif self.kind == "choice":
            ok = isinstance(value, str) and value in self.choices
        elif self.kind == "text":
            if not isinstance(value, str) or len(value) > MAX_PROMPT:
                ok = False
            else:
                return extra_network_problem(value)
        else:  # a name: the resolver checks it against A1111's list
            ok = isinstance(value, str) and 0 < len(value.strip()) and len(value) <= MAX_NAME
        return None if ok else f"must be {self.allowed()}, got {got(value)}"


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _in_range(knob: Knob, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if knob.kind == "int" and not isinstance(value, int):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if value in knob.off:
        return True
    return (knob.low is None or value >= knob.low) and (knob.high is None or value <= knob.high)


# The txt2img fields a job may set: per-request generation knobs, nothing that persists in A1111.
FIELDS: dict[str, Knob] = {
    "tiling": Knob("bool", "seamless (tileable) images; changes only how this image is drawn"),
    "subseed": Knob("int", "variation seed, bounded like 'seed'", -1, SEED_MAX),
    "subseed_strength": Knob("number", "how far the variation seed moves the image", 0.0, 1.0),
    "seed_resize_from_w": Knob("int", "noise made as for another width; bounded like 'width'", 64, 2048, off=(-1, 0)),
    "seed_resize_from_h": Knob("int", "noise made as for another height; bounded like 'height'", 64, 2048,
                               off=(-1, 0)),
    "eta": Knob("number", "sampler noise of DDIM / ancestral samplers (A1111's slider range)", 0.0, 1.0),
    "s_churn": Knob("number", "k-diffusion sigma churn (A1111's slider range)", 0.0, 100.0),
    "s_tmin": Knob("number", "k-diffusion sigma tmin (A1111's slider range)", 0.0, 10.0),
    "s_tmax": Knob("number", "k-diffusion sigma tmax (A1111's slider range)", 0.0, 999.0),
    "s_noise": Knob("number", "k-diffusion sigma noise (A1111's slider range)", 0.0, 1.1),
    "s_min_uncond": Knob("number", "negative-guidance minimum sigma, a speed knob (A1111's slider range)",
                         0.0, 15.0),
    "restore_faces": Knob("bool", "A1111's face restoration of the result, with its built-in restorer"),
    "do_not_save_samples": Knob("bool", "it only stops A1111 writing files"),
    "do_not_save_grid": Knob("bool", "it only stops A1111 writing files"),
    "refiner_checkpoint": Knob("checkpoint", "a second checkpoint for the last steps; checked against A1111's "
                                             "checkpoint list"),
    "refiner_switch_at": Knob("number", "when the refiner takes over, as a fraction of the steps", 0.0, 1.0),
    "hr_checkpoint_name": Knob("checkpoint", "the hires pass's checkpoint; checked against A1111's checkpoint "
                                             "list"),
    "hr_sampler_name": Knob("sampler", "the hires pass's sampler; checked against A1111's sampler list"),
    "hr_scheduler": Knob("scheduler", "the hires pass's scheduler; checked against A1111's scheduler list"),
    "hr_prompt": Knob("text", "the hires pass's prompt; bounded and checked like 'prompt'"),
    "hr_negative_prompt": Knob("text", "the hires pass's negative prompt; bounded and checked like "
                                       "'negative_prompt'"),
}

# The options a job may set in override_settings, each stated in every payload (see the module
# docstring). The defaults are A1111 v1.10.1's, equal to the recorded get_options of A1111 and Forge.
OPTIONS: dict[str, Knob] = {
    "eta_noise_seed_delta": Knob("int", "ENSD: shifts the ancestral samplers' noise seed (other tools' "
                                        "reproducibility)", 0, SEED_MAX, default=0),
    "randn_source": Knob("choice", "where the initial noise is drawn (reproducibility across machines)",
                         choices=("GPU", "CPU", "NV"), default="GPU"),
    "sd_vae": Knob("vae", "the VAE that decodes the image; checked against /sdapi/v1/sd-vae",
                   default="Automatic", backends=frozenset({"a1111"})),
    "eta_ddim": Knob("number", "DDIM sampler noise", 0.0, 1.0, default=0.0),
    "eta_ancestral": Knob("number", "ancestral samplers' noise", 0.0, 1.0, default=1.0),
    "always_discard_next_to_last_sigma": Knob("bool", "a sampler schedule tweak", default=False),
    "sgm_noise_multiplier": Knob("bool", "SDXL-style noise scaling", default=False),
    "enable_batch_seeds": Knob("bool", "batch images equal to single ones for k-diffusion samplers",
                               default=True),
    "sd_noise_schedule": Knob("choice", "the noise schedule", choices=("Default", "Zero Terminal SNR"),
                              default="Default"),
    "emphasis": Knob("choice", "how (word:1.2) emphasis is applied",
                     choices=("None", "Ignore", "Original", "No norm"), default="Original"),
    "token_merging_ratio": Knob("number", "token merging, a speed/quality knob (A1111's slider range)",
                                0.0, 0.9, default=0.0),
    "token_merging_ratio_hr": Knob("number", "token merging of the hires pass (A1111's slider range)",
                                   0.0, 0.9, default=0.0),
    "img2img_extra_noise": Knob("number", "extra noise of the hires pass (A1111's slider range)", 0.0, 1.0,
                                default=0.0),
    "skip_early_cond": Knob("number", "skips the negative prompt early in sampling (A1111's slider range)",
                            0.0, 1.0, default=0.0),
    "sdxl_crop_top": Knob("int", "SDXL crop conditioning, bounded like 'height'", 0, 2048, default=0),
    "sdxl_crop_left": Knob("int", "SDXL crop conditioning, bounded like 'width'", 0, 2048, default=0),
    "uni_pc_variant": Knob("choice", "UniPC sampler variant", choices=("bh1", "bh2", "vary_coeff"),
                           default="bh1"),
    "uni_pc_skip_type": Knob("choice", "UniPC step spacing", choices=("time_uniform", "time_quadratic", "logSNR"),
                             default="time_uniform"),
    "uni_pc_order": Knob("int", "UniPC order (A1111's slider range)", 1, 50, default=3),
    "uni_pc_lower_order_final": Knob("bool", "UniPC lower order at the last steps", default=True),
    "code_former_weight": Knob("number", "CodeFormer strength for 'restore_faces'", 0.0, 1.0, default=0.5),
}


def options_for(backend: str) -> dict[str, Knob]:
    return {name: knob for name, knob in OPTIONS.items() if backend in knob.backends}


def option_defaults(read: Any, backend: str) -> dict[str, Any]:
    """The value stated for each allowed option a job leaves unset: A1111's own value as read
    from /sdapi/v1/options (``read``; so an operator's config stays in force), else, where
    that is missing or not a value the knob allows, A1111 v1.10.1's default."""
    values = read if isinstance(read, dict) else {}
    out: dict[str, Any] = {}
    for name, knob in options_for(backend).items():
        value = values.get(name)
        out[name] = value if value is not None and knob.problem(value) is None else knob.default
    return out


# --------------------------------------------------------------------------- checks
def hatch_problems(extra: dict[str, Any], backend: str) -> list[Problem]:
    """Every key of the job's ``a1111`` object that is not allowed, or whose value is not."""
    if len(extra) > MAX_HATCH_KEYS:
        return [Problem("a1111", f"a1111 has {len(extra)} keys; at most {MAX_HATCH_KEYS} are allowed")]
    problems: list[Problem] = []
    for key, value in extra.items():
        fld = f"a1111.{key[:60]}"
        if key == "override_settings":
            problems += _override_problems(value, backend)
        elif key in FIELDS:
            why = FIELDS[key].problem(value)
            if why:
                problems.append(Problem(fld, f"{fld} {why}"))
        else:
            problems.append(Problem(fld, _refusal(key)))
    return problems


def _refusal(key: str) -> str:
    fld = f"a1111.{key[:60]}"
    if key in JOB_OWNED:
        where = " or ".join(f"'{name}'" for name in JOB_OWNED[key].split(" or "))  # hires, or img2img's own
        return f"{fld} is set through the job field {where}; use that instead"
    if key in WORKER_OWNED:
        return f"{fld} cannot be changed: {WORKER_OWNED[key]}"
    if key in REFUSED:
        return f"{fld} is not allowed: {REFUSED[key]}"
    if key in OPTIONS or key in OVERRIDE_OWNED:
        return f"{fld} is an A1111 option, not a txt2img field; put it in a1111.override_settings"
    return f"'{key[:60]}' is not a field the a1111 escape hatch takes; {did_you_mean(key, sorted(FIELDS))}"


def _override_problems(value: Any, backend: str) -> list[Problem]:
    fld = "a1111.override_settings"
    if not isinstance(value, dict):
        return [Problem(fld, f"{fld} must be an object of A1111 options")]
    if len(value) > MAX_OVERRIDE_KEYS:
        return [Problem(fld, f"{fld} has {len(value)} keys; at most {MAX_OVERRIDE_KEYS} are allowed")]
    allowed = options_for(backend)
    problems = []
    for opt, v in value.items():
        ofld = f"{fld}.{opt[:60]}"
        if opt in allowed:
            why = allowed[opt].problem(v)
            if why:
                problems.append(Problem(ofld, f"{ofld} {why}"))
        else:
            problems.append(Problem(ofld, _option_refusal(opt, backend)))
    return problems


def _option_refusal(opt: str, backend: str) -> str:
    ofld = f"a1111.override_settings.{opt[:60]}"
    if opt in OVERRIDE_OWNED:
        return f"{ofld} is set through the job field '{OVERRIDE_OWNED[opt]}'; use that instead"
    if opt in OPTIONS:  # allowed, but not on this backend
        return f"{ofld} is not used by {backend}" + ("; use 'modules' (Forge's VAE / text encoders)"
                                                      if opt == "sd_vae" else "")
    if opt in REFUSED_OPTIONS:
        return f"{ofld} is not allowed: {REFUSED_OPTIONS[opt]}"
    if any(hint in opt.lower() for hint in _FILE_OPTION_HINTS):
        return f"{ofld} is not allowed: where and whether files are written is the worker's choice"
    return (f"{ofld} is not an option a job may set; {did_you_mean(opt, sorted(options_for(backend)))} "
            "(an option stays set in A1111 for later jobs, so only those the worker states in every job "
            "are allowed)")


def list_names(extra: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field path, list kind, name) for every allowed value that names something in one of
    A1111's lists; call after ``hatch_problems`` found nothing."""
    out = [(key, FIELDS[key].kind, value) for key, value in extra.items()
           if key in FIELDS and FIELDS[key].kind in LIST_KINDS]
    overrides = extra.get("override_settings") or {}
    out += [(f"override_settings.{opt}", OPTIONS[opt].kind, value) for opt, value in overrides.items()
            if opt in OPTIONS and OPTIONS[opt].kind in LIST_KINDS]
    return out
