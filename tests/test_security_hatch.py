"""Security: the ``a1111`` escape hatch and prompt tags stay within the job's own fields.

Item 5: the hatch is an allow-list (a1111/hatch.py). Scripts, infotext, raw alwayson
scripts, file saving, output folders, unlisted options, unchecked model / VAE names and
extra-network tags typed in a prompt are refused before anything reaches A1111, with the
field named. Item 6: every option a job may set is stated in every payload, so an option one
job set never stays set in A1111 for the next (the worker sends
``override_settings_restore_afterwards: false``).

Run through the real handler against the replay A1111 server (``worker_env``).
"""

from __future__ import annotations

import time

import pytest

from tests.contract import assert_txt2img_conforms, openapi
from tests.replay import recordings
from tests.support.jobs import JobRunner, txt2img_bodies
from tests.support.worker import warm_up

run = JobRunner(job_id="hatch", base={"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64})


def _refused(out: dict, field: str, *words: str) -> str:
    """The message for ``field`` of a refused job (which must be a validation error naming it)."""
    assert out.get("error_type") in {"validation", "model_not_found"}, out
    by_field = {d["field"]: d["message"] for d in out.get("details", [])}
    assert field in by_field, (field, out)
    message = by_field[field]
    assert field in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# --------------------------------------------------------------------------- item 5
ESCAPES = [
    # (a1111 object, refused field, words the message must hold)
    ({"script_name": "prompts from file or textbox",
      "script_args": [False, False, "start", "--prompt 'x' --steps 150 --width 2048 --height 2048"]},
     "a1111.script_name", ("not allowed",)),
    ({"script_args": [1, 2]}, "a1111.script_args", ("not allowed",)),
    ({"infotext": "x\nSteps: 150, Size: 2048x2048, Seed: 1"}, "a1111.infotext", ("not allowed",)),
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "a1111.alwayson_scripts", ("adetailer", "controlnet")),
    ({"save_images": True}, "a1111.save_images", ("cannot be changed",)),
    ({"styles": ["my style"]}, "a1111.styles", ("not allowed",)),
    ({"override_settings": {"outdir_txt2img_samples": "/etc/cron.d"}},
     "a1111.override_settings.outdir_txt2img_samples", ("not allowed", "files")),
    ({"override_settings": {"samples_save": True}}, "a1111.override_settings.samples_save", ("not allowed",)),
    ({"override_settings": {"lora_functional": True}}, "a1111.override_settings.lora_functional",
     ("not an option a job may set",)),
    ({"override_settings": {"sd_checkpoints_limit": 20}}, "a1111.override_settings.sd_checkpoints_limit",
     ("not an option a job may set",)),
    ({"override_settings": {"sd_hypernetwork": "evil"}}, "a1111.override_settings.sd_hypernetwork",
     ("not allowed",)),
    ({"override_settings": {"sd_vae": "../../outside.safetensors"}}, "a1111.override_settings.sd_vae",
     ("unknown vae", "Automatic")),
    ({"override_settings": {"eta_noise_seed_delta": "31337"}}, "a1111.override_settings.eta_noise_seed_delta",
     ("must be an integer",)),
    ({"hr_checkpoint_name": "model_c"}, "a1111.hr_checkpoint_name", ("unknown checkpoint", "model_a")),
    ({"refiner_checkpoint": "modle_b"}, "a1111.refiner_checkpoint", ("did you mean 'model_b'",)),
    ({"hr_prompt": "<lora:detail_tweaker:50>"}, "a1111.hr_prompt", ("loras",)),
    ({"seed_resize_from_h": 100_000, "seed_resize_from_w": 100_000}, "a1111.seed_resize_from_h",
     ("from 64 to 2048",)),
]


@pytest.mark.parametrize(("extra", "field", "words"), ESCAPES, ids=[e[1] for e in ESCAPES])
def test_escape_hatch_reaches_only_allowed_fields(worker_env, extra, field, words):
    out = run({"a1111": extra})
    _refused(out, field, *words)
    assert txt2img_bodies(worker_env) == []  # refused before A1111 saw anything


@pytest.mark.parametrize("prompt_field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("tag", ["<lora:detail_tweaker:50>", "<lora:no_such_lora:1>", "<hypernet:anything:1>",
                                 "<lyco:detail_tweaker:1>"])
def test_extra_network_tags_in_prompts_are_refused_with_a_pointer_to_loras(worker_env, prompt_field, tag):
    out = run({prompt_field: f"a photo of a cat {tag}"})
    _refused(out, prompt_field, "'loras'", "-5..5")
    assert txt2img_bodies(worker_env) == []


def test_seventeen_typed_lora_tags_do_not_pass_the_lora_cap(worker_env):
    out = run({"prompt": "cat " + " ".join("<lora:detail_tweaker:1>" for _ in range(17))})
    _refused(out, "prompt", "'loras'")
    out = run({"adetailer": [{"model": "mediapipe_face_full", "prompt": "face <lora:film_grain:50>"}]})
    _refused(out, "adetailer[0].prompt", "'loras'")
    assert txt2img_bodies(worker_env) == []


def test_two_hundred_thousand_override_keys_are_refused_at_once(worker_env):
    overrides = {f"opt_{i}": i for i in range(200_000)}
    t0 = time.monotonic()
    out = run({"a1111": {"override_settings": overrides}})
    assert time.monotonic() - t0 < 10
    message = _refused(out, "a1111.override_settings", "at most")
    assert "200000" in message and len(out["details"]) == 1
    assert txt2img_bodies(worker_env) == []


def test_allowed_fields_and_checked_names_reach_a1111_as_listed(worker_env):
    out = run({"a1111": {"tiling": True, "subseed": 7, "hr_checkpoint_name": "MODEL_B",
                         "override_settings": {"sd_vae": "none", "randn_source": "CPU"}}})
    assert "error" not in out, out
    [body] = txt2img_bodies(worker_env)
    assert body["tiling"] is True and body["subseed"] == 7
    assert body["hr_checkpoint_name"] == "model_b.safetensors"  # the exact title A1111 lists
    assert body["override_settings"]["sd_vae"] == "None" and body["override_settings"]["randn_source"] == "CPU"
    for refused in ("script_name", "script_args", "infotext", "alwayson_scripts", "save_images", "styles"):
        assert refused not in body
    assert_txt2img_conforms(body, "a1111")


# --------------------------------------------------------------------------- item 6
def test_an_option_one_job_sets_is_reset_for_the_next(worker_env):
    first = run({"a1111": {"override_settings": {"eta_noise_seed_delta": 31337, "randn_source": "CPU",
                                                 "emphasis": "No norm"}}})
    assert "error" not in first, first
    second = run({})
    assert "error" not in second, second
    one, two = txt2img_bodies(worker_env)
    assert one["override_settings_restore_afterwards"] is False  # A1111 keeps whatever was set...
    assert one["override_settings"]["eta_noise_seed_delta"] == 31337
    # ... so the next job states the defaults: A1111's own values, read from /sdapi/v1/options.
    recorded = recordings("a1111")["get_options"]["response"]["json"]
    assert two["override_settings"]["eta_noise_seed_delta"] == recorded["eta_noise_seed_delta"] == 0
    assert two["override_settings"]["randn_source"] == recorded["randn_source"] == "GPU"
    assert two["override_settings"]["emphasis"] == recorded["emphasis"] == "Original"
    from a1111.hatch import options_for  # imported here: the assertions above also run on code without it

    for body in (one, two):  # every option a job may set, in every payload
        assert set(options_for("a1111")) <= set(body["override_settings"])
        assert_txt2img_conforms(body, "a1111")


def test_a_failed_first_options_read_is_not_retried_after_a_job_set_an_option(worker_env):
    """A1111's options cannot be read when the first job runs (simulated 500), and that job sets
    ENSD 31337. Afterwards the replay server answers the options with 31337 in them, simulating
    the A1111 that kept the job's override: the next job must state the built-in default (0),
    not hand the first caller's value on as "A1111's own"."""
    warm_up(worker_env)  # readiness reads the options too: get it out of the way first
    worker_env.fault("GET", "/sdapi/v1/options", "status", status=500,
                     body={"error": "RuntimeError", "detail": "", "body": "", "errors": "simulated"})
    first = run({"a1111": {"override_settings": {"eta_noise_seed_delta": 31337}}})
    assert "error" not in first, first
    leaked = recordings("a1111")["get_options"]["response"]["json"] | {"eta_noise_seed_delta": 31337}
    worker_env.fault("GET", "/sdapi/v1/options", "status", status=200, body=leaked)
    second = run({})
    assert "error" not in second, second
    one, two = txt2img_bodies(worker_env)[-2:]
    assert one["override_settings"]["eta_noise_seed_delta"] == 31337
    assert two["override_settings"]["eta_noise_seed_delta"] == 0


def test_the_stated_defaults_are_the_servers_own_options(worker_env):
    """The replay server answers /sdapi/v1/options with a recorded body changed on purpose: it
    simulates an operator whose A1111 config sets ENSD 31337; a job that sets nothing keeps it."""
    body = recordings("a1111")["get_options"]["response"]["json"] | {"eta_noise_seed_delta": 31337,
                                                                      "randn_source": 12}
    worker_env.fault("GET", "/sdapi/v1/options", "status", status=200, body=body)
    assert "error" not in run({})
    [sent] = txt2img_bodies(worker_env)
    assert sent["override_settings"]["eta_noise_seed_delta"] == 31337
    assert sent["override_settings"]["randn_source"] == "GPU"  # not a value the option takes: the default


# --------------------------------------------------------------------------- the allow-list
@pytest.mark.parametrize("backend", ["a1111", "forge"])
def test_the_allow_list_matches_the_recorded_servers(backend):
    """Every allowed field is a txt2img field of the server, every allowed option one of its
    options, and each option's fallback default is the server's recorded value."""
    from a1111.hatch import FIELDS, OPTIONS, options_for

    doc = openapi(backend)
    fields = doc["components"]["schemas"]["StableDiffusionProcessingTxt2Img"]["properties"]
    assert set(FIELDS) <= set(fields)
    options = recordings(backend)["get_options"]["response"]["json"]
    for name, knob in options_for(backend).items():
        assert name in doc["components"]["schemas"]["Options"]["properties"], name
        assert options[name] == knob.default, name
        assert knob.problem(knob.default) is None, name
    assert all(knob.reason for knob in [*FIELDS.values(), *OPTIONS.values()])
