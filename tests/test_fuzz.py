"""Property-based fuzzing of ``handler.handler`` over the whole job input schema.

Hypothesis generates job inputs (wrong types, huge strings, deep nesting, unicode including
lone surrogates, NaN/inf, negative and boundary numbers, path-like model names, unknown
fields, every action, odd job envelopes) and runs each through the real handler against ONE
replay A1111 server per backend for the whole module (real HTTP on 127.0.0.1). After every
example these properties are checked:

- the handler returned (never raised) a dict that serialises to strict JSON (no NaN);
- it is either a result of the action asked for, or ``{"error": <sentence>, "error_type": <known type>}``
  (never ``internal``: that is a crash the caller would see as one);
- a validation / model-not-found error happened before generation: no txt2img was sent;
- every txt2img body the replay server received conforms to the recorded OpenAPI schema
  (tests/contract.py), and no token value from the environment appears in the result;
- nothing was written outside MODELS_DIR.

Settings: ``derandomize=True`` (the same examples on every CI run), ``database=None``,
``deadline=None``. Most inputs are rejected by validation without any HTTP; valid ones cost one
recorded txt2img answer. The number of examples run is printed in pytest's terminal summary.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import handler as handler_mod
from a1111.hatch import FIELDS as HATCH_FIELDS
from a1111.hatch import OPTIONS as HATCH_OPTIONS
from a1111.hatch import Knob
from a1111.payload import JOB_OWNED, OVERRIDE_OWNED, WORKER_OWNED
from a1111.state import state_for
from tests.contract import EXTRAS_BATCH_PATH, EXTRAS_SINGLE_PATH, IMG2IMG_PATH, request_problems, txt2img_problems
from tests.replay import ReplayServer, _Handler, recordings
from tests.support.jobs import png_b64
from tests.support.worker import make_models_dir, reset_worker_state

TXT2IMG = "/sdapi/v1/txt2img"
ERROR_TYPES = {"validation", "model_not_found", "download_failed", "a1111_unavailable", "out_of_memory",
               "timeout", "a1111_error", "result_too_large", "upload_failed",
               "catalog"}  # models.json missing or broken: the operator's error (cache/catalog.py)
# Token values put in the environment for the whole run: none may ever show up in a result.
SECRETS = {
    "HF_TOKEN": "hf_FuzzSecretToken0123456789abcdef",
    "CIVITAI_TOKEN": "civitai-fuzz-secret-0123456789",
    "BUCKET_SECRET_ACCESS_KEY": "bucket-fuzz-secret-0123456789",
}
# How many examples each fuzz test runs (sum >= 10,000, checked by the last test).
EXAMPLES = {
    "test_fuzz_envelope": 500,
    "test_fuzz_wild_fields": 3200,
    "test_fuzz_near_valid": 3000,
    "test_fuzz_a1111_fields": 800,
    "test_fuzz_hatch_allow_list": 500,
    "test_fuzz_model_names": 1600,
    "test_fuzz_actions": 600,
    "test_fuzz_forge": 1000,
    "test_fuzz_catalog": 600,
    "test_fuzz_rubber_tile": 500,
    "test_fuzz_a1111_answers": 500,
    "test_fuzz_list_answers": 500,
    "test_fuzz_image_jobs": 600,
}
IMAGE_ROUTES = (IMG2IMG_PATH, EXTRAS_SINGLE_PATH, EXTRAS_BATCH_PATH)
MIN_TOTAL = 10_000
# "One clear sentence": long enough for a field, the allowed values and a suggestion, not for an echo
# of a 10,000-character input.
MAX_ERROR_CHARS = 1500


# --------------------------------------------------------------------------- run report
@dataclass
class _Report:
    examples: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    bodies_checked: int = 0

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(self.examples.values())
        if not total:
            return
        secs = sum(self.seconds.values())
        terminalreporter.write_sep("-", "fuzz summary (tests/test_fuzz.py)")
        terminalreporter.write_line(
            f"fuzz: {total} generated inputs run through handler.handler in {secs:.1f} s; "
            f"{self.bodies_checked} txt2img bodies checked against the recorded OpenAPI schema")
        for name, n in sorted(self.examples.items()):
            terminalreporter.write_line(f"  {name}: {n} examples, {self.seconds[name]:.1f} s")
        terminalreporter.write_line("  outcomes: " + ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common()))


REPORT = _Report()


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report(request: pytest.FixtureRequest) -> None:
    pm = request.config.pluginmanager
    if not pm.is_registered(REPORT):
        pm.register(REPORT, "fuzz-report")


# --------------------------------------------------------------------------- environment
@dataclass
class Env:
    server: ReplayServer
    backend: str
    models: Path
    root: Path
    outside_before: frozenset[str]
    environ: dict[str, str | None]  # applied around every handler call (None: unset)


def _tree(root: Path, models: Path) -> frozenset[str]:
    """Every path under ``root`` that is not inside MODELS_DIR."""
    return frozenset(str(p) for p in root.rglob("*") if models not in p.parents and p != models)


@pytest.fixture(scope="module")
def _nodelay() -> Iterator[None]:
    # The stdlib server writes headers and body separately; without TCP_NODELAY every answer
    # waits ~40 ms for a delayed ACK. uvicorn (A1111's server) sets TCP_NODELAY, so this is
    # also the more faithful transport. Restored after the module.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Handler, "disable_nagle_algorithm", True)
        yield


def call_handler(env: Env, raw_job: Any, **extra_env: str) -> Any:
    """handler.handler with this env's variables set just for the call (two module-scoped
    environments live side by side, so neither may own os.environ for the whole module)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**env.environ, **extra_env}.items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        return handler_mod.handler(raw_job)


def _make_env(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Env]:
    root = tmp_path_factory.mktemp(f"fuzz-{backend}")
    models = make_models_dir(root / "models")
    with ReplayServer(backend) as srv:
        srv.models_dir = models
        environ: dict[str, str | None] = {
            "A1111_URL": srv.url, "MODELS_DIR": str(models), "A1111_READY_TIMEOUT": "5", "JOB_TIMEOUT": "30",
            # No catalog: a catalog entry names a remote source, and fuzzed names must never
            # start real downloads (CI has no internet). test_fuzz_catalog uses an offline copy.
            "MODELS_CATALOG": str(root / "no-catalog.json"),
            "WEBUI_BACKEND": "forge" if backend == "forge" else "a1111",
            # Hosts that can never resolve (RFC 2606 .invalid): a fuzzed hf/civitai source fails at
            # once, with or without internet. (Not HF_HUB_OFFLINE: huggingface-hub reads it once per
            # process, so it would leak into later tests.)
            "HF_ENDPOINT": "https://hub.invalid", "CIVITAI_BASE_URL": "https://civitai.invalid",
            "DOWNLOAD_ATTEMPTS": "1", **SECRETS}
        for name in ("DOWNLOAD_ALLOW_PRIVATE", "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "A1111_PID_FILE",
                     "A1111_LOG_FILE", "ALLOW_PICKLE_MODELS", "CACHE_MAX_GB", "MAX_RESULT_MB"):
            environ[name] = None
        env = Env(srv, "forge" if backend == "forge" else "a1111", models, root, frozenset(), environ)
        reset_worker_state()
        first = call_handler(env, {"id": "prime", "input": {"prompt": "a photo of a cat"}})
        assert "images" in first, first  # the replay server and the handler work at all
        env.outside_before = _tree(root, models)
        yield env
        reset_worker_state()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, _nodelay: None) -> Iterator[Env]:
    yield from _make_env(tmp_path_factory, "a1111")


@pytest.fixture(scope="module")
def sdxl_env(tmp_path_factory: pytest.TempPathFactory, _nodelay: None) -> Iterator[Env]:
    """The SDXL recordings (they list the rubber-tile checkpoint, LoRA and embedding)."""
    yield from _make_env(tmp_path_factory, "a1111-sdxl")


@pytest.fixture(scope="module")
def forge_env(tmp_path_factory: pytest.TempPathFactory, _nodelay: None) -> Iterator[Env]:
    yield from _make_env(tmp_path_factory, "forge")


# --------------------------------------------------------------------------- the properties
def _action(raw_job: Any) -> str:
    inp = raw_job.get("input") if isinstance(raw_job, dict) else None
    action = inp.get("action", "txt2img") if isinstance(inp, dict) else None
    return action if isinstance(action, str) else "?"


def run_and_check(env: Env, raw_job: Any, test: str, **extra_env: str) -> dict:
    srv = env.server
    before = len(srv.requests)
    t0 = time.monotonic()
    result = call_handler(env, raw_job, **extra_env)  # must not raise: an exception fails the example
    REPORT.seconds[test] += time.monotonic() - t0
    REPORT.examples[test] += 1
    new = srv.requests[before:]

    assert isinstance(result, dict), f"handler returned {type(result).__name__}"
    text = json.dumps(result, allow_nan=False)  # RunPod sends the result as JSON
    for name, secret in SECRETS.items():
        assert secret not in text, f"{name} leaked into the result"
    bodies = [r.json for r in new if r.method == "POST" and r.path == TXT2IMG]
    for body in bodies:
        problems = txt2img_problems(body, env.backend)
        assert not problems, f"txt2img body breaks the {env.backend} OpenAPI schema: {problems}"
    REPORT.bodies_checked += len(bodies)
    image_bodies = [(r.path, r.json) for r in new if r.method == "POST" and r.path in IMAGE_ROUTES]
    for path, body in image_bodies:
        problems = request_problems(body, path, env.backend)
        assert not problems, f"{path} body breaks the {env.backend} OpenAPI schema: {problems}"
    REPORT.bodies_checked += len(image_bodies)

    if "error" in result:
        etype = result.get("error_type")
        REPORT.outcomes[str(etype)] += 1
        assert etype in ERROR_TYPES, f"unexpected error_type {etype!r}: {result['error'][:500]}"
        assert isinstance(result["error"], str) and result["error"].strip()
        assert "Traceback" not in result["error"]
        assert len(result["error"]) <= MAX_ERROR_CHARS, f"error of {len(result['error'])} characters, not a sentence"
        assert set(result) <= {"error", "error_type", "details", "refresh_worker", "status", "log_tail",
                               "size_mb", "limit_mb", "models"}, sorted(result)
        if etype in {"validation", "model_not_found"}:
            assert not bodies, f"{etype} error after a txt2img was sent: {result['error'][:300]}"
            assert not image_bodies, f"{etype} error after an image request was sent: {result['error'][:300]}"
            assert not result.get("refresh_worker"), "bad input must never recycle the worker"
    else:
        action = _action(raw_job)
        REPORT.outcomes[f"ok:{action}"] += 1
        inp = raw_job.get("input") if isinstance(raw_job, dict) else None
        if action == "txt2img" and isinstance(inp, dict) and "init_images" in inp:
            assert isinstance(result.get("images"), list) and result["images"], sorted(result)
            assert [p for p, _ in image_bodies] == [IMG2IMG_PATH], "an img2img result without an img2img request"
        elif action == "upscale":
            assert isinstance(result.get("images"), list) and result["images"], sorted(result)
            assert len(image_bodies) == 1 and image_bodies[0][0] != IMG2IMG_PATH
        elif action == "txt2img":
            assert isinstance(result.get("images"), list) and result["images"], sorted(result)
            assert bodies, "a txt2img result without a txt2img request"
        elif action == "health":
            assert result.get("status") == "ok"
        elif action == "list_models":
            assert isinstance(result.get("checkpoints"), list)
        elif action == "prefetch":
            assert isinstance(result.get("models"), list)
        else:
            raise AssertionError(f"success for an invalid action {action!r}")
    assert _tree(env.root, env.models) == env.outside_before, "something was written outside MODELS_DIR"
    return result


# --------------------------------------------------------------------------- strategies
def _rec(folder: str, name: str) -> Any:
    return recordings(folder)[name]["response"]["json"]


SAMPLERS = [s["name"] for s in _rec("a1111", "get_samplers")]
SCHEDULERS = [s["label"] for s in _rec("a1111", "get_schedulers")]
CHECKPOINTS = [e["title"] for e in _rec("a1111", "get_sd_models")]
LORAS = [e["name"] for e in _rec("a1111", "get_loras")]
UPSCALERS = [u["name"] for u in _rec("a1111", "get_upscalers")] + ["Latent", "Latent (bicubic)"]
AD_MODELS = _rec("a1111", "ext_adetailer_ad_model")["ad_model"]
CN_MODULES = _rec("a1111", "ext_controlnet_module_list")["module_list"][:8]
A1111_FIELDS = sorted(_rec("a1111", "get_openapi_json")["components"]["schemas"]
                      ["StableDiffusionProcessingTxt2Img"]["properties"])
# The a1111 fields the escape hatch may set (the others are refused at once by design).
ESCAPE_FIELDS = [k for k in A1111_FIELDS if k not in JOB_OWNED and k not in WORKER_OWNED] + ["nope"]
COLORS = ["black", "white", "red", "green", "blue", "gray", "brown", "yellow", "orange", "purple", "pink"]


PNG_B64 = png_b64((200, 30, 35))

PATH_LIKE = [
    "..", ".", "../model_a", "../../etc/passwd", "/etc/passwd", "loras/../../x", "..\\..\\win.ini", "a/b",
    "C:\\Windows\\x", "x\x00y", "model_a\x00.safetensors", "%2e%2e%2fmodel_a", "....//x", "~/.ssh/id_rsa",
    "model_a.safetensors/..", " model_a", "model_a ", "\u202emodel_a", "model_a.ckpt", "x.pt", "x.bin",
    "file:///etc/passwd", "\\\\server\\share\\x", "a" * 300, "con", "nul", "model_a.safetensors\n", "..safetensors",
    "model..a", ".hidden", "checkpoints", "cache_registry.json", "cache_registry", "model_a.safetensors.tmp",
    "https://127.0.0.1/x.safetensors", "\ud800", "\ufeffmodel_a", "MODEL_A", "model_a.SAFETENSORS", "*", "?",
    "é" * 200, "💥" * 100, "a" * 255, "a" * 250 + ".ckpt",  # within the character limits, over 255 bytes
]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, 1.5, 2.5, 29.99, 30.0001]
SPECIAL_INTS = [0, -1, 1, 7, 8, 63, 64, 65, 72, 150, 151, 2047, 2048, 2049, 2056, 2**31 - 1, 2**31, 2**32 - 1,
                2**32, 2**53 + 1, 2**63, -(2**63), 10**100]
ODD_TEXT = ["", " ", "\n", "\ud800", "a\udfff", "\x00", "\ufeff", "ﬁ", "Ω≈ç√", "💥" * 3, "<lora:x:1>",
            "<lora:detail_tweaker:99>", "{\"a\": 1}", "None", "null", "true", "NaN", "Infinity", "%s%n", "' OR 1=1 --"]


def _deep(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# JSON nesting a RunPod job can really carry: runpod parses it with json.loads, which stops
# below ~1000 levels, so up to 900 here.
deep_values = st.builds(_deep, st.sampled_from([2, 20, 100, 400, 900]), st.sampled_from(["list", "dict"]))
huge_strings = st.builds(lambda n, ch: ch * n, st.sampled_from([10_001, 50_000, 300_000]),
                         st.sampled_from(["a", "é", "💥", "/"]))
texts = st.one_of(st.text(max_size=30), st.sampled_from(ODD_TEXT), st.text(st.characters(codec="utf-8"), max_size=12))
ints = st.one_of(st.integers(min_value=-300, max_value=3000), st.sampled_from(SPECIAL_INTS), st.integers())
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS),
                   st.floats(min_value=-10, max_value=40))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
wild = st.one_of(
    st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
                 max_leaves=10),
    huge_strings, deep_values, st.sampled_from(PATH_LIKE),
)
path_like = st.one_of(st.sampled_from(PATH_LIKE),
                      st.builds(lambda a, sep, b: f"{a}{sep}{b}", texts, st.sampled_from(["/", "\\", "/../", ".."]),
                                texts))


def names(known: list[str]) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(known), st.sampled_from(PATH_LIKE), st.text(min_size=1, max_size=20),
                     st.text(min_size=60, max_size=255))


# Sources: only ones that fail fast without internet (private / unresolvable hosts are refused;
# the Hub and Civitai endpoints are .invalid hosts); their shape is what is being fuzzed.
sources = st.one_of(
    st.fixed_dictionaries({"url": st.sampled_from([
        "https://127.0.0.1/x.safetensors", "https://localhost/lora.safetensors", "https://10.0.0.1/a.safetensors",
        "https://169.254.169.254/latest/meta-data", "https://[::1]/x.safetensors", "http://example.invalid/x.safetensors",
        "https://example.invalid/../../x.safetensors", "ftp://example.invalid/x", "https://", "file:///etc/passwd"])},
        optional={"sha256": st.sampled_from(["0" * 64, "xyz", ""]), "name": names(["my_lora"])}),
    st.fixed_dictionaries({"hf": st.sampled_from(["owner/repo", "../x", "a/b/c", "", "XpucT/Deliberate"]),
                           "file": st.sampled_from(["x.safetensors", "../x.safetensors", "x.ckpt", "a/b.safetensors"])},
                          optional={"revision": texts, "name": names(["my_ckpt"])}),
    st.fixed_dictionaries({"civitai": st.one_of(ints, texts)}),
    st.dictionaries(st.sampled_from(["hf", "civitai", "url", "file", "name", "sha256", "weight", "x"]), wild,
                    max_size=3),
)
model_refs = st.one_of(names(CHECKPOINTS + ["model_a", "model_b"]), sources)
lora_entries = st.one_of(
    st.fixed_dictionaries({"name": names(LORAS)}, optional={"weight": st.one_of(floats, ints)}),
    sources,
    names(LORAS),
)
hires_values = st.fixed_dictionaries({}, optional={
    "scale": st.one_of(floats, ints), "upscaler": names(UPSCALERS), "steps": ints,
    "denoising_strength": floats})
adetailer_values = st.one_of(st.booleans(), st.lists(st.fixed_dictionaries(
    {"model": names(AD_MODELS + ["face_yolov8s.pt", "None"])},
    optional={"prompt": texts, "negative_prompt": texts, "confidence": floats, "denoising_strength": floats}),
    max_size=5))
controlnet_values = st.lists(st.fixed_dictionaries(
    {"model": names(["control_v11p_sd15_canny", "None"]),
     "image": st.sampled_from([PNG_B64, "data:image/png;base64," + PNG_B64, "notbase64!", "",
                               base64.b64encode(b"not an image").decode(), PNG_B64[:40]])},
    optional={"module": names(CN_MODULES), "weight": floats, "guidance_start": floats, "guidance_end": floats,
              "control_mode": st.sampled_from(["Balanced", "My prompt is more important", "nope"]),
              "resize_mode": st.sampled_from(["Just Resize", "Crop and Resize", "x"]),
              "pixel_perfect": st.one_of(st.booleans(), ints)}), max_size=4)
sizes = st.one_of(st.sampled_from([64, 512, 70, 1024, 2048, 2056, 0, -8, 8, 63]), ints)

GOOD: dict[str, st.SearchStrategy] = {
    "prompt": st.one_of(st.just("a photo of a cat"), texts, st.text(min_size=1, max_size=200)),
    "negative_prompt": texts,
    "checkpoint": model_refs,
    "loras": st.lists(lora_entries, max_size=3),
    "lora_urls": st.lists(st.sampled_from(["https://127.0.0.1/l.safetensors", "http://x/y", "https://10.1.2.3/a",
                                           "not a url"]), max_size=2),
    "lora_scales": st.lists(floats, max_size=2),
    "embeddings": st.lists(st.one_of(names(["rubber_tile"]), sources), max_size=3),
    "sampler_name": st.one_of(st.sampled_from(SAMPLERS + ["DPM++ 2M Karras", "euler A", "Euler SGM Uniform",
                                                          "dpm++ sde karras", "k_euler"]), texts),
    "sampler": st.sampled_from(SAMPLERS + ["DPM++ 2M Karras"]),
    "scheduler": st.one_of(st.sampled_from(SCHEDULERS + ["karras", "sgm_uniform"]), texts),
    "steps": ints,
    "cfg_scale": st.one_of(floats, ints),
    "distilled_cfg_scale": st.one_of(floats, ints),
    "width": sizes,
    "height": sizes,
    "seed": ints,
    "batch_size": ints,
    "n_iter": ints,
    "clip_skip": ints,
    "hires": hires_values,
    "adetailer": adetailer_values,
    "controlnet": controlnet_values,
    "return_control_maps": st.one_of(st.booleans(), ints),
    "preset": st.sampled_from(["rubber_tile", "flux", "nope", "", "RUBBER_TILE"]),
    "colors": st.lists(st.fixed_dictionaries({"name": st.sampled_from([*COLORS, "teal", "RED"]),
                                              "proportion": st.one_of(ints, floats)}), max_size=4),
    "angle": st.one_of(ints, floats),
    "quality": st.sampled_from(["preview", "standard", "high", "ultra", ""]),
    "modules": st.lists(names(["ae.safetensors", "clip_l.safetensors"]), max_size=3),
    "output": st.fixed_dictionaries({}, optional={
        "format": st.sampled_from(["png", "jpeg", "webp", "gif", "PNG"]), "quality": ints,
        "upload": st.sampled_from(["auto", "never", "always", "sometimes"])}),
    "a1111": st.dictionaries(st.sampled_from([*A1111_FIELDS, "nope"]), wild, max_size=3),
    "checkpoints": st.lists(model_refs, max_size=2),
    "catalog": st.one_of(st.booleans(), ints),
}
FIELDS = sorted(GOOD)
UNKNOWN_KEYS = st.one_of(st.sampled_from(["guidance_scale", "num_inference_steps", "model", "lora", "cfg",
                                          "enable_hr", "sampler_index", "Prompt", "prompt ", "", "__class__",
                                          "__proto__", "a" * 10_000]), texts)


def field_value(name: str) -> st.SearchStrategy:
    return st.one_of(GOOD[name], wild)


wild_inputs = st.fixed_dictionaries(
    {}, optional={**{f: field_value(f) for f in FIELDS}, "action": st.one_of(st.sampled_from(
        ["txt2img", "health", "list_models", "prefetch", "img2img", "TXT2IMG", ""]), wild)},
).flatmap(lambda d: st.dictionaries(UNKNOWN_KEYS, wild, max_size=2).map(lambda extra: {**extra, **d}))

# A job that passes validation unless a mutation breaks it: few txt2img steps, small sizes.
near_valid_inputs = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries({"prompt": st.one_of(st.just("a photo of a cat"), st.text(min_size=1, max_size=80))},
                          optional={"steps": st.integers(1, 30), "width": st.sampled_from([64, 512, 768]),
                                    "height": st.sampled_from([64, 512]), "seed": st.integers(-1, 2**32 - 1),
                                    "cfg_scale": st.floats(1, 30), "sampler_name": st.sampled_from(SAMPLERS),
                                    "scheduler": st.sampled_from(SCHEDULERS),
                                    "checkpoint": st.sampled_from(CHECKPOINTS),
                                    "clip_skip": st.integers(1, 12), "batch_size": st.integers(1, 2)}),
    st.dictionaries(st.sampled_from(FIELDS), st.deferred(lambda: st.one_of(*[GOOD[f] for f in FIELDS])),
                    max_size=2)
    | st.sampled_from(FIELDS).flatmap(lambda f: GOOD[f].map(lambda v, f=f: {f: v})),
)

FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                   HealthCheck.large_base_example])


# --------------------------------------------------------------------------- the tests
@settings(max_examples=EXAMPLES["test_fuzz_envelope"], **FUZZ)
@given(raw=st.one_of(
    wild,
    st.fixed_dictionaries({}, optional={"id": wild, "input": wild, "s3Config": wild, "webhook": wild}),
    st.fixed_dictionaries({"id": st.just("j"), "input": near_valid_inputs},
                          optional={"s3Config": st.one_of(wild, st.fixed_dictionaries({}, optional={
                              "accessId": texts, "accessSecret": st.just(SECRETS["BUCKET_SECRET_ACCESS_KEY"]),
                              "bucketName": texts, "endpointUrl": st.sampled_from(
                                  ["not a url", "", "ftp://x", "http://127.0.0.1:1"])}))}),
))
def test_fuzz_envelope(env: Env, raw: Any) -> None:
    """Whatever RunPod hands the handler (not a dict, no input, odd ids, odd s3Config)."""
    run_and_check(env, raw, "test_fuzz_envelope")


@settings(max_examples=EXAMPLES["test_fuzz_wild_fields"], **FUZZ)
@given(inp=wild_inputs)
def test_fuzz_wild_fields(env: Env, inp: dict) -> None:
    """Every field at once with anything in it, plus unknown fields."""
    run_and_check(env, {"id": "wild", "input": inp}, "test_fuzz_wild_fields")


@settings(max_examples=EXAMPLES["test_fuzz_near_valid"], **FUZZ)
@given(inp=near_valid_inputs)
def test_fuzz_near_valid(env: Env, inp: dict) -> None:
    """Valid jobs with up to two more fields: these reach A1111, so the contract check bites."""
    run_and_check(env, {"id": "near", "input": inp}, "test_fuzz_near_valid")


MODEL_FIELDS = ["checkpoint", "loras.name", "loras.source_name", "embeddings", "controlnet.model", "adetailer.model",
                "hires.upscaler", "modules", "prefetch.checkpoints", "prefetch.loras", "prefetch.embeddings",
                "lora.hf_file"]


# Names only compared with what A1111 lists (never turned into a path by the worker).
LISTED_ONLY = {"adetailer.model", "hires.upscaler", "controlnet.model"}


def _with_name(where: str, name: Any) -> dict:
    base: dict[str, Any] = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64}
    if where == "checkpoint":
        base["checkpoint"] = name
    elif where == "loras.name":
        base["loras"] = [{"name": name, "weight": 0.5}]
    elif where == "loras.source_name":
        base["loras"] = [{"url": "https://127.0.0.1/x.safetensors", "name": name}]
    elif where == "lora.hf_file":
        base["loras"] = [{"hf": "owner/repo", "file": name}]
    elif where == "embeddings":
        base["embeddings"] = [name]
    elif where == "controlnet.model":
        base["controlnet"] = [{"model": name, "image": PNG_B64}]
    elif where == "adetailer.model":
        base["adetailer"] = [{"model": name}]
    elif where == "hires.upscaler":
        base["hires"] = {"upscaler": name}
    elif where == "modules":
        base["modules"] = [name]
    else:
        kind = where.split(".", 1)[1]
        return {"action": "prefetch", kind: [name]}
    return base


@settings(max_examples=EXAMPLES["test_fuzz_model_names"], **FUZZ)
@given(where=st.sampled_from(MODEL_FIELDS), name=st.one_of(path_like, names(LORAS + CHECKPOINTS), wild))
def test_fuzz_model_names(env: Env, where: str, name: Any) -> None:
    """Path-like and odd names in every model-name field: refused, never resolved outside MODELS_DIR."""
    result = run_and_check(env, {"id": "names", "input": _with_name(where, name)}, "test_fuzz_model_names")
    if isinstance(name, str) and ("/" in name or "\\" in name or name.strip(" .") == "" or "\x00" in name):
        if where in LISTED_ONLY:  # matched against A1111's list, never used as a path
            assert result.get("error_type") in {"validation", "model_not_found"}, (where, name, result)
        else:  # a model reference: refused by validation, before any lookup
            assert result.get("error_type") == "validation", (where, name, result)


@settings(max_examples=EXAMPLES["test_fuzz_a1111_fields"], **FUZZ)
@given(extra=st.dictionaries(st.sampled_from(ESCAPE_FIELDS), st.one_of(wild, floats, st.dictionaries(texts, wild)),
                             min_size=1, max_size=2))
def test_fuzz_a1111_fields(env: Env, extra: dict) -> None:
    """The ``a1111`` escape hatch of an otherwise valid job: anything in any A1111 field."""
    inp = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64, "a1111": extra}
    run_and_check(env, {"id": "a1111", "input": inp}, "test_fuzz_a1111_fields")


OPTION_NAMES = sorted(_rec("a1111", "get_options"))
# The top-level keys the worker itself sets in the body of a job with no hires or extensions.
OWN_KEYS = {"prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
            "seed", "batch_size", "n_iter", "override_settings", "override_settings_restore_afterwards"}


def knob_values(knob: Knob) -> st.SearchStrategy:
    """Values an allowed knob takes (and, through ``wild``, values it does not)."""
    if knob.kind == "bool":
        good: st.SearchStrategy = st.booleans()
    elif knob.kind == "int":
        good = st.integers(int(knob.low), int(knob.high)) | st.sampled_from(knob.off or (0,))
    elif knob.kind == "number":
        good = st.floats(knob.low, knob.high)
    elif knob.kind == "choice":
        good = st.sampled_from(knob.choices)
    elif knob.kind == "text":
        good = texts
    else:  # a name in one of A1111's lists
        good = st.sampled_from({"checkpoint": [*CHECKPOINTS, "model_b"], "vae": ["Automatic", "None", "nope"],
                                "sampler": SAMPLERS, "scheduler": SCHEDULERS}[knob.kind])
    return st.integers(0, 9).flatmap(lambda i: good if i < 8 else wild)


def _entry(table: dict[str, Knob], names: list[str]) -> st.SearchStrategy:
    allowed = st.sampled_from(sorted(table))
    other = st.one_of(st.sampled_from(names), texts)
    return st.integers(0, 9).flatmap(lambda i: allowed if i < 8 else other).flatmap(
        lambda k: (knob_values(table[k]) if k in table else wild).map(lambda v, k=k: (k, v)))


hatch_objects = st.builds(
    lambda fields, overrides: {**dict(fields), **({"override_settings": dict(overrides)} if overrides else {})},
    st.lists(_entry(HATCH_FIELDS, A1111_FIELDS), max_size=2),
    st.lists(_entry(HATCH_OPTIONS, OPTION_NAMES), max_size=2))


@settings(max_examples=EXAMPLES["test_fuzz_hatch_allow_list"], **FUZZ)
@given(extra=hatch_objects)
def test_fuzz_hatch_allow_list(env: Env, extra: dict) -> None:
    """Random escape-hatch keys and values: nothing outside the allow-list (a1111/hatch.py)
    ever reaches A1111, and a job with a key outside it is refused before generation."""
    before = len(env.server.requests)
    inp = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64, "a1111": extra}
    result = run_and_check(env, {"id": "hatch", "input": inp}, "test_fuzz_hatch_allow_list")
    bodies = [r.json for r in env.server.requests[before:] if r.method == "POST" and r.path == TXT2IMG]
    for body in bodies:
        assert set(body) - OWN_KEYS <= set(HATCH_FIELDS) & set(extra), sorted(set(body) - OWN_KEYS)
        assert set(body["override_settings"]) <= set(HATCH_OPTIONS) | set(OVERRIDE_OWNED), body["override_settings"]
        assert set(HATCH_OPTIONS) - {"sd_vae"} <= set(body["override_settings"])  # every option, every job
    overrides = extra.get("override_settings") or {}
    outside = (set(extra) - set(HATCH_FIELDS) - {"override_settings"}) | (set(overrides) - set(HATCH_OPTIONS))
    if outside:
        assert result.get("error_type") == "validation" and not bodies, (sorted(outside), result)


@settings(max_examples=EXAMPLES["test_fuzz_actions"], **FUZZ)
@given(action=st.sampled_from(["health", "list_models", "prefetch"]),
       extra=st.fixed_dictionaries({}, optional={f: field_value(f) for f in
                                                 ["checkpoints", "loras", "embeddings", "catalog", "prompt", "steps"]}))
def test_fuzz_actions(env: Env, action: str, extra: dict) -> None:
    """The other actions, alone and with fields they do or do not take."""
    run_and_check(env, {"id": "act", "input": {"action": action, **extra}}, "test_fuzz_actions")


@settings(max_examples=EXAMPLES["test_fuzz_forge"], **FUZZ)
@given(inp=st.one_of(near_valid_inputs, wild_inputs,
                     st.fixed_dictionaries({"preset": st.just("flux"), "prompt": texts},
                                           optional={f: GOOD[f] for f in ["hires", "adetailer", "lora_urls",
                                                                          "distilled_cfg_scale", "modules",
                                                                          "width", "height", "steps"]})))
def test_fuzz_forge(forge_env: Env, inp: dict) -> None:
    """The Forge backend (flux preset, modules, distilled cfg), checked against Forge's schema."""
    run_and_check(forge_env, {"id": "forge", "input": inp}, "test_fuzz_forge")


def _catalog_ids() -> list[str]:
    try:
        return [m["id"] for m in json.loads(CATALOG.read_text())["models"]]
    except (OSError, ValueError, KeyError, TypeError):
        return ["deliberate_v6"]


CATALOG = Path(handler_mod.__file__).resolve().parent / "models.json"
CATALOG_IDS = _catalog_ids()


@pytest.fixture(scope="module")
def offline_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models.json with every source removed: catalog names resolve, but nothing is downloaded
    (CI has no internet); a missing model is then a clear model_not_found."""
    data = json.loads(CATALOG.read_text())
    for entry in data.get("models", []):
        entry["source"] = None
    path = tmp_path_factory.mktemp("catalog") / "models.json"
    path.write_text(json.dumps(data))
    return path


@settings(max_examples=EXAMPLES["test_fuzz_catalog"], **FUZZ)
@given(base=near_valid_inputs, extra=st.fixed_dictionaries({}, optional={
    "checkpoint": st.sampled_from(CATALOG_IDS), "loras": st.lists(st.one_of(
        st.sampled_from(CATALOG_IDS), st.fixed_dictionaries({"name": st.sampled_from(CATALOG_IDS)},
                                                            optional={"weight": floats})), max_size=3),
    "embeddings": st.lists(st.sampled_from(CATALOG_IDS), max_size=2),
    "preset": st.sampled_from(["rubber_tile", "flux", "realistic_portrait", "nope"]),
    "colors": GOOD["colors"], "angle": st.integers(-5, 185), "quality": GOOD["quality"]}))
def test_fuzz_catalog(env: Env, offline_catalog: Path, base: dict, extra: dict) -> None:
    """Catalog ids in every model field and the catalog's presets, with the real models.json."""
    run_and_check(env, {"id": "catalog", "input": {**base, **extra}}, "test_fuzz_catalog",
                  MODELS_CATALOG=str(offline_catalog))


def _colors(names_and_cuts: tuple[list[str], list[int]]) -> list[dict]:
    chosen, cuts = names_and_cuts
    edges = [0, *sorted(cuts)[: len(chosen) - 1], 100]
    return [{"name": n, "proportion": edges[i + 1] - edges[i]} for i, n in enumerate(chosen)]


# Mostly valid colour lists (distinct names, integer proportions summing to 100), some not.
tile_colors = st.one_of(
    st.tuples(st.lists(st.sampled_from(COLORS), min_size=1, max_size=4, unique=True),
              st.lists(st.integers(1, 99), min_size=3, max_size=3, unique=True)).map(_colors),
    GOOD["colors"])


@pytest.fixture(scope="module")
def tile_catalog(offline_catalog: Path) -> Path:
    """The offline catalog with the preset's ControlNet models pointed at the one the SDXL
    recordings list after a model was added (the API shape is what is fuzzed, not the weights)."""
    data = json.loads(offline_catalog.read_text())
    rubber = data.setdefault("presets", {}).setdefault("rubber_tile", {})
    rubber["controlnet"] = {**rubber.get("controlnet", {}),
                            "softedge": {"module": "pidinet", "model": "control_v11p_sd15_canny"},
                            "canny": {"module": "canny", "model": "control_v11p_sd15_canny"}}
    path = offline_catalog.with_name("tile-models.json")
    path.write_text(json.dumps(data))
    return path


@settings(max_examples=EXAMPLES["test_fuzz_rubber_tile"], **FUZZ)
@given(colors=tile_colors, extra=st.fixed_dictionaries({}, optional={
    "angle": st.one_of(st.integers(0, 180), ints), "quality": GOOD["quality"], "seed": GOOD["seed"],
    "prompt": texts, "negative_prompt": texts, "steps": st.integers(1, 60), "cfg_scale": st.floats(1, 30),
    "sampler_name": GOOD["sampler_name"], "loras": GOOD["loras"], "output": GOOD["output"],
    "width": sizes, "hires": hires_values}))
def test_fuzz_rubber_tile(sdxl_env: Env, tile_catalog: Path, colors: list, extra: dict) -> None:
    """The rubber-tile preset end to end: two generations, ControlNet by angle, a colour map."""
    sdxl_env.server.respond("GET", "/controlnet/model_list", "ext_controlnet_model_list_after_adding_model")
    inp = {"preset": "rubber_tile", "colors": colors, **extra}
    result = run_and_check(sdxl_env, {"id": "tile", "input": inp}, "test_fuzz_rubber_tile",
                           MODELS_CATALOG=str(tile_catalog))
    if "error" not in result:
        assert result.get("labels") == ["preview", "final", "colormap"], result.get("labels")


def _answer_like_txt2img(images: Any, info: Any, extra: dict) -> dict:
    return {"images": images, "parameters": {}, "info": info, **extra}


# What a server can put in a JSON answer: no NaN/Infinity (Starlette's JSONResponse refuses them),
# but anything else, lone surrogates included (a "\ud800" escape is valid JSON).
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False), texts),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4), max_leaves=10)
a1111_answers = st.one_of(
    json_values,
    st.builds(_answer_like_txt2img,
              st.one_of(st.lists(st.one_of(st.just(PNG_B64), texts, json_values), max_size=3), json_values),
              st.one_of(st.builds(json.dumps, st.dictionaries(st.sampled_from(
                  ["all_seeds", "seed", "infotexts", "index_of_first_image", "width", "height"]), json_values)),
                  texts, json_values),
              st.dictionaries(texts, json_values, max_size=2)),
    st.fixed_dictionaries({}, optional={"error": texts, "detail": json_values, "body": json_values,
                                        "errors": texts, "message": texts}),
)


@settings(max_examples=EXAMPLES["test_fuzz_a1111_answers"], **FUZZ)
@given(status=st.one_of(st.just(200), st.sampled_from([400, 404, 405, 422, 500, 502, 503, 504]),
                        st.integers(201, 599)),
       body=a1111_answers)
def test_fuzz_a1111_answers(env: Env, status: int, body: Any) -> None:
    """Whatever A1111 answers a txt2img with (status and JSON body, recorded shapes or not):
    a clear error or a result, never a crash."""
    env.server.fault("POST", TXT2IMG, "status", status=status, body=body, times=1)
    try:
        run_and_check(env, {"id": "answer", "input": {"prompt": "a photo of a cat", "steps": 1}},
                      "test_fuzz_a1111_answers")
    finally:
        env.server.clear_faults()


LIST_ROUTES = ["/sdapi/v1/sd-models", "/sdapi/v1/loras", "/sdapi/v1/embeddings", "/sdapi/v1/samplers",
               "/sdapi/v1/schedulers", "/sdapi/v1/options", "/sdapi/v1/memory", "/sdapi/v1/upscalers",
               "/sdapi/v1/latent-upscale-modes", "/adetailer/v1/ad_model", "/openapi.json"]


@settings(max_examples=EXAMPLES["test_fuzz_list_answers"], **FUZZ)
@given(route=st.sampled_from(LIST_ROUTES), status=st.sampled_from([200, 200, 200, 404, 500]), body=a1111_answers,
       inp=st.sampled_from([
           {"prompt": "a photo of a cat", "steps": 1, "loras": [{"name": "detail_tweaker", "weight": 0.5}],
            "embeddings": ["rubber_tile"], "sampler_name": "Euler a", "hires": {"upscaler": "Latent"},
            "adetailer": [{"model": "mediapipe_face_full"}], "a1111": {"tiling": False}},
           {"prompt": "a photo of a cat", "checkpoint": "model_b"},
           {"action": "health"}, {"action": "list_models"}]))
def test_fuzz_list_answers(env: Env, route: str, status: int, body: Any, inp: dict) -> None:
    """Whatever A1111 answers the list routes the worker reads (names, options, memory, schema)."""
    state_for(env.server.url).lists.forget()  # read every list afresh, from the faulty answer
    env.server.fault("GET", route, "status", status=status, body=body)
    try:
        run_and_check(env, {"id": "lists", "input": inp}, "test_fuzz_list_answers")
    finally:
        env.server.clear_faults()
        state_for(env.server.url).lists.forget()


# --------------------------------------------------------------------------- image jobs
image_sources = st.one_of(
    st.sampled_from([png_b64(), png_b64(size=(32, 48)), "data:image/png;base64," + png_b64(),
                     "data:text/plain;base64,aGVsbG8=", "http://example.com/a.png", "https://127.0.0.1:1/a.png",
                     base64.b64encode(b"not an image").decode(), "", "%%%"]),
    texts, wild)
image_fields = {
    "denoising_strength": st.one_of(floats, ints), "resize_mode": st.one_of(ints, wild),
    "mask": image_sources, "mask_blur": st.one_of(ints, wild), "inpainting_fill": ints,
    "inpaint_full_res": st.one_of(st.booleans(), wild), "inpaint_full_res_padding": ints,
    "inpainting_mask_invert": ints, "mask_resize": st.one_of(st.booleans(), wild),
    "width": ints, "height": ints, "hires": st.just({"scale": 2}), "seed": ints, "steps": st.just(1),
}
upscale_fields = {
    "upscaling_resize": st.one_of(floats, ints), "upscaling_resize_w": ints, "upscaling_resize_h": ints,
    "upscaler_1": names(UPSCALERS), "upscaler_2": names(UPSCALERS), "extras_upscaler_2_visibility": floats,
    "prompt": texts,
}
unit = st.floats(min_value=0, max_value=1)
image_jobs = st.one_of(
    st.fixed_dictionaries({"prompt": st.just("a photo of a cat"), "init_images": st.just([png_b64()])}, optional={
        "denoising_strength": unit, "mask": st.sampled_from([png_b64(), png_b64(size=(32, 48))]),
        "mask_blur": st.integers(0, 64), "resize_mode": st.integers(0, 3), "inpainting_fill": st.integers(0, 3),
        "mask_resize": st.booleans(), "width": st.sampled_from([64, 96, 512]), "steps": st.integers(1, 3)}),
    st.fixed_dictionaries({"action": st.just("upscale"), "images": st.sampled_from([[png_b64()], [png_b64()] * 2]),
                           "upscaler_1": st.sampled_from(["Lanczos", "Nearest", "lanczos", "4x-Nope"])}, optional={
        "upscaling_resize": st.floats(min_value=1, max_value=8), "upscaler_2": st.sampled_from(["Nearest", "None"]),
        "extras_upscaler_2_visibility": unit}),
    st.fixed_dictionaries({"prompt": st.just("a photo of a cat"),
                           "init_images": st.lists(image_sources, min_size=0, max_size=3)}, optional=image_fields),
    st.fixed_dictionaries({"action": st.just("upscale"), "images": st.lists(image_sources, min_size=0, max_size=3)},
                          optional=upscale_fields),
)


@settings(max_examples=EXAMPLES["test_fuzz_image_jobs"], **FUZZ)
@given(inp=image_jobs)
def test_fuzz_image_jobs(env: Env, inp: dict) -> None:
    """img2img, inpainting and upscale jobs with good and bad images and fields: each body sent
    conforms to the recorded img2img / extras schema, or the job is a clear error sent nowhere."""
    run_and_check(env, {"id": "images", "input": inp}, "test_fuzz_image_jobs")


# The count comes last: pytest runs a module's tests in file order, and it needs every fuzz test done.
def test_fuzz_example_count() -> None:
    """The whole suite ran at least 10,000 generated inputs (only when every fuzz test ran)."""
    ran = {name for name, n in REPORT.examples.items() if n}
    if ran != set(EXAMPLES):
        pytest.skip(f"only {sorted(ran)} ran; the count applies to the whole module")
    total = sum(REPORT.examples.values())
    assert total >= MIN_TOTAL, f"only {total} fuzz examples ran"
