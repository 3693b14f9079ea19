"""schemas/job.py: strict types, ranges, unknown fields, every problem at once."""

from __future__ import annotations

import math

import pytest

from schemas.errors import ValidationFailed, error_result
from schemas.job import HFSource, Job, UrlSource, parse_job


def problems(raw: dict) -> list[dict]:
    with pytest.raises(ValidationFailed) as info:
        parse_job(raw)
    result = error_result(info.value)
    assert result["error_type"] == "validation"
    assert isinstance(result["error"], str) and "\n" not in result["error"]
    return result["details"]


def fields(raw: dict) -> list[str]:
    return [p["field"] for p in problems(raw)]


def test_minimal_prompt_is_valid_and_defaults_stay_unset():
    job = parse_job({"prompt": "a cat"})
    assert job.action == "txt2img"
    assert job.steps is None and job.cfg_scale is None and job.width is None  # compiler applies defaults
    assert job.seed == -1 and job.batch_size == 1 and job.n_iter == 1
    assert job.loras == [] and job.embeddings == []


@pytest.mark.parametrize("raw, field, words", [
    ({"steps": 500}, "steps", "1 to 150"),
    ({"steps": 0}, "steps", "1 to 150"),
    ({"width": 70}, "width", "multiple of 8"),
    ({"height": 2056}, "height", "64 to 2048"),
    ({"width": 56}, "width", "64 to 2048"),
    ({"cfg_scale": 31}, "cfg_scale", "1 to 30"),
    ({"batch_size": 9}, "batch_size", "1 to 8"),
    ({"n_iter": 0}, "n_iter", "1 to 8"),
    ({"clip_skip": 13}, "clip_skip", "1 to 12"),
    ({"seed": -2}, "seed", "-1"),
    ({"seed": 2**32}, "seed", "-1"),
])
def test_ranges_name_the_field_and_what_is_allowed(raw, field, words):
    details = problems({"prompt": "x", **raw})
    assert [d["field"] for d in details] == [field]
    assert field in details[0]["message"] and words in details[0]["message"]


@pytest.mark.parametrize("raw, field", [
    ({"steps": "20"}, "steps"),          # A1111 would coerce
    ({"steps": 20.0}, "steps"),
    ({"steps": True}, "steps"),          # bool is not an int here
    ({"seed": False}, "seed"),
    ({"cfg_scale": "7"}, "cfg_scale"),
    ({"cfg_scale": math.nan}, "cfg_scale"),
    ({"cfg_scale": math.inf}, "cfg_scale"),
    ({"prompt": 5}, "prompt"),
    ({"return_control_maps": 1}, "return_control_maps"),
    ({"loras": [{"name": "a", "weight": "0.5"}]}, "loras[0].weight"),
    ({"loras": [{"name": "a", "weight": math.nan}]}, "loras[0].weight"),
])
def test_types_are_strict(raw, field):
    assert fields({"prompt": "x", **raw}) == [field]


def test_unknown_field_is_rejected_with_a_suggestion():
    details = problems({"prompt": "x", "guidance_scale": 7})
    assert details == [{"field": "guidance_scale", "message": "unknown field 'guidance_scale'; did you mean "
                                                               "'cfg_scale'?", "suggestion": "cfg_scale"}]
    assert problems({"prompt": "x", "stpes": 3})[0]["suggestion"] == "steps"


def test_all_problems_are_reported_together():
    details = problems({"prompt": "x", "steps": 500, "width": 70, "guidance_scale": 7, "seed": "1"})
    assert sorted(d["field"] for d in details) == ["guidance_scale", "seed", "steps", "width"]
    with pytest.raises(ValidationFailed) as info:
        parse_job({"prompt": "x", "steps": 500, "width": 70})
    # Every problem is in the one sentence (it used to say "and 1 more problem, see details").
    assert "steps must be" in info.value.message and "width must be" in info.value.message


def test_prompt_required_unless_a_preset_builds_it():
    assert fields({}) == ["prompt"]
    # An empty prompt is accepted, as A1111 accepts it (the result carries a warning); it was refused.
    assert parse_job({"prompt": "   "}).prompt == "   "
    assert fields({"prompt": "x" * 10001}) == ["prompt"]
    assert parse_job({"preset": "flux"}).prompt is None


def test_sampler_alias_and_conflict():
    assert parse_job({"prompt": "x", "sampler": "Euler a"}).sampler_name == "Euler a"
    assert fields({"prompt": "x", "sampler": "Euler a", "sampler_name": "Euler"}) == ["sampler_name"]


def test_lora_entries():
    job = parse_job({"prompt": "x", "loras": [
        {"name": "detail_tweaker", "weight": 0.8},
        "film_grain",
        {"hf": "owner/repo", "file": "x.safetensors", "weight": 0.3},
        {"url": "https://example.com/a.safetensors", "name": "mine"},
        {"civitai": 12345},
    ]})
    refs = job.lora_refs()
    assert refs[0] == ("detail_tweaker", 0.8, "loras[0]")
    assert refs[1] == ("film_grain", None, "loras[1]")
    assert isinstance(refs[2][0], HFSource) and refs[2][1] == 0.3
    assert isinstance(refs[3][0], UrlSource) and refs[3][0].name == "mine"


@pytest.mark.parametrize("entry", [
    {"weight": 1},                                   # no name, no source
    {"name": "../etc/passwd"},                       # path escape
    {"name": "sub/dir"},
    {"hf": "owner/repo"},                            # hf needs file
    {"hf": "owner/repo", "file": "sub/x.safetensors"},  # top-level files only
    {"hf": "owner/repo", "file": "https://127.0.0.1/x.safetensors"},
    {"url": "http://example.com/a.safetensors"},     # https only
    {"url": "https://x/a", "hf": "o/r", "file": "f"},  # two sources
    {"name": "a", "weight": 6},
    {"name": "a", "strength": 1},
])
def test_bad_lora_entries(entry):
    assert fields({"prompt": "x", "loras": [entry]})[0].startswith("loras[0]")


def test_at_most_16_loras():
    assert fields({"prompt": "x", "loras": [{"name": f"l{i}"} for i in range(17)]}) == ["loras"]


def test_checkpoint_references():
    assert parse_job({"prompt": "x", "checkpoint": "model_b"}).checkpoint == "model_b"
    src = parse_job({"prompt": "x", "checkpoint": {"hf": "XpucT/Deliberate", "file": "Deliberate_v6.safetensors"}})
    assert isinstance(src.checkpoint, HFSource)
    assert fields({"prompt": "x", "checkpoint": "../model"}) == ["checkpoint"]
    assert fields({"prompt": "x", "checkpoint": {"civitai": "1590699"}}) == ["checkpoint"]
    assert fields({"prompt": "x", "checkpoint": {"ftp": "x"}}) == ["checkpoint"]


def test_lora_urls_shorthand():
    job = parse_job({"prompt": "x", "lora_urls": ["https://h/a.safetensors", "https://h/b.safetensors"],
                     "lora_scales": [0.5, 1.2]})
    refs = job.lora_refs()
    assert [(r[0].url, r[1]) for r in refs] == [("https://h/a.safetensors", 0.5), ("https://h/b.safetensors", 1.2)]
    assert fields({"prompt": "x", "lora_urls": ["ftp://h/a"]}) == ["lora_urls"]
    assert fields({"prompt": "x", "lora_urls": ["https://h/a"], "lora_scales": [1, 2]}) == ["lora_scales"]


def test_nested_models_forbid_unknown_keys():
    assert fields({"prompt": "x", "hires": {"scale": 2, "sclae": 2}}) == ["hires.sclae"]
    assert fields({"prompt": "x", "hires": {"scale": 9}}) == ["hires.scale"]
    assert fields({"prompt": "x", "output": {"format": "gif"}}) == ["output.format"]


def test_actions_take_only_their_fields():
    assert parse_job({"action": "health"}).action == "health"
    assert fields({"action": "health", "prompt": "x"}) == ["prompt"]
    assert fields({"action": "render"}) == ["action"]
    job = parse_job({"action": "prefetch", "checkpoints": ["deliberate_v6"], "loras": ["detail_tweaker_xl"],
                     "catalog": True})
    assert job.checkpoints == ["deliberate_v6"] and job.catalog is True
    assert fields({"action": "prefetch"}) == ["action"]
    assert fields({"action": "prefetch", "checkpoints": ["a"], "steps": 3}) == ["steps"]
    assert fields({"prompt": "x", "checkpoints": ["a"]}) == ["checkpoints"]


def test_input_must_be_an_object():
    with pytest.raises(ValidationFailed):
        parse_job(["prompt"])
    assert fields({}) == ["prompt"]


def test_rebuild_roundtrip_keeps_the_job():
    # presets rebuild jobs from model_dump(exclude_unset=True): that must validate again.
    job = parse_job({"prompt": "x", "sampler": "Euler a", "loras": [{"name": "a", "weight": 0.5}],
                     "checkpoint": {"url": "https://h/c.safetensors"}, "hires": {"scale": 1.5}})
    again = Job.model_validate(job.model_dump(exclude_unset=True))
    assert again == job
