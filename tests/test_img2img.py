"""img2img and inpainting through handler.handler against the replay A1111 (recordings
``img2img_*`` of a real A1111 v1.10.1): what is sent, what comes back, and every bad image
refused before any generation request."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from tests.contract import IMG2IMG_PATH, request_problems
from tests.replay import ReplayServer
from tests.support.images import b64, bomb_png, decoded, encoded, image_b64
from tests.support.jobs import JobRunner
from tests.support.servers import FileServer
from tests.support.worker import point_worker_at, warm_up

run = JobRunner(job_id="i2i")


@pytest.fixture
def env(worker_env: ReplayServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ReplayServer:
    monkeypatch.setenv("MODELS_CATALOG", str(tmp_path / "no-catalog.json"))
    warm_up(worker_env)
    return worker_env


def like(srv: ReplayServer, name: str, **fields: object) -> dict:
    """A job asking for what the recorded img2img ``name`` asked; the replay answers with it."""
    srv.respond("POST", IMG2IMG_PATH, name)
    req = srv.recording(name)["request"]["json"]
    keep = ("prompt", "seed", "steps", "init_images", "mask", "denoising_strength", "mask_blur", "inpainting_fill",
            "inpaint_full_res", "inpainting_mask_invert")
    return {**{k: req[k] for k in keep if k in req}, "sampler_name": "Euler", **fields}


def sent(srv: ReplayServer) -> list[dict]:
    bodies = srv.sent("POST", IMG2IMG_PATH)
    for body in bodies:
        assert request_problems(body, IMG2IMG_PATH) == []
    return bodies


def test_img2img_returns_the_generated_image_with_its_seed(env: ReplayServer) -> None:
    out = run(like(env, "img2img_denoise_0_5"))
    assert "error" not in out, out
    recorded = env.recording("img2img_denoise_0_5")["response"]["json"]
    assert out["images"] == recorded["images"] and out["seeds"] == [42]
    [body] = sent(env)
    assert body["denoising_strength"] == 0.5 and (body["width"], body["height"]) == (64, 64)  # from the image
    assert decoded(body["init_images"][0]).size == (64, 64)
    assert out["parameters"]["init_images"][0].startswith("<") and "omitted" in out["parameters"]["init_images"][0]
    assert not [w for w in out["warnings"] if "asked" in w]


def test_img2img_to_another_size(env: ReplayServer) -> None:
    out = run(like(env, "img2img_resize_to_96", width=96, height=96, resize_mode=1))
    assert "error" not in out, out
    [body] = sent(env)
    assert (body["width"], body["height"], body["resize_mode"]) == (96, 96, 1)
    assert decoded(out["images"][0]).size == (96, 96) and not [w for w in out["warnings"] if "asked" in w]


@pytest.mark.parametrize("name", ["img2img_init_image_data_url", "img2img_init_image_jpeg"])
def test_data_url_and_jpeg_init_images_reach_a1111_as_png(env: ReplayServer, name: str) -> None:
    out = run(like(env, name))
    assert "error" not in out, out
    [body] = sent(env)
    assert not body["init_images"][0].startswith("data:") and decoded(body["init_images"][0]).format == "PNG"


def test_inpainting_sends_the_mask_and_its_settings(env: ReplayServer) -> None:
    out = run(like(env, "img2img_inpaint_mask"))
    assert "error" not in out, out
    [body] = sent(env)
    assert decoded(body["mask"]).size == (64, 64)
    assert (body["mask_blur"], body["inpainting_fill"], body["inpaint_full_res"], body["inpainting_mask_invert"]) \
        == (4, 1, False, 0)
    assert out["parameters"]["mask"].endswith("characters omitted>")


def test_mismatched_mask_is_refused_naming_both_sizes(env: ReplayServer) -> None:
    """A1111 stretches a 32x48 mask over a 64x64 image silently (recording
    img2img_mask_size_mismatch); the worker refuses it unless the job asks for that."""
    job = like(env, "img2img_mask_size_mismatch")
    out = run(job)
    assert out["error_type"] == "validation"
    assert "32x48" in out["error"] and "64x64" in out["error"] and "mask_resize" in out["error"]
    assert sent(env) == []
    assert "error" not in run({**job, "mask_resize": True})
    assert len(sent(env)) == 1


BAD_IMAGES = {
    "bad base64": ("iVBORw0KGgo%%%%" * 40, "is not valid base64"),
    "not an image": (b64(b"%PDF-1.4 not an image at all " * 30), "is not a PNG, JPEG or WebP image"),
    "decompression bomb": (b64(bomb_png(5000, 5000)), "more than INPUT_IMAGE_MAX_PIXELS"),
    "plain http": ("http://example.com/cat.png", "plain http:// is refused"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_init_image_is_a_clear_error_before_generation(env: ReplayServer, case: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    image, said = BAD_IMAGES[case]
    with caplog.at_level(logging.DEBUG):
        out = run({"prompt": "a cat", "init_images": [image_b64(), image]})
    assert out["error_type"] == "validation" and "init_images[1]" in out["error"] and said in out["error"]
    assert sent(env) == []
    text = json.dumps(out) + caplog.text
    assert image[:40] not in text or image.startswith("http")  # never the image's data


def test_bad_mask_is_named(env: ReplayServer) -> None:
    out = run({"prompt": "a cat", "init_images": [image_b64()], "mask": b64(b"GIF89a" + b"\0" * 64)})
    assert out["error_type"] == "validation" and out["error"].startswith("validation: mask is not a PNG")
    assert sent(env) == []


def test_too_many_images(env: ReplayServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_IMAGES_MAX", "2")
    out = run({"prompt": "a cat", "init_images": [image_b64()] * 2, "mask": image_b64()})
    assert out["error_type"] == "validation" and "3 images, more than INPUT_IMAGES_MAX=2" in out["error"]
    assert sent(env) == []


def test_hires_is_refused_for_img2img(env: ReplayServer) -> None:
    out = run({"prompt": "a cat", "init_images": [image_b64()], "hires": {"scale": 2}})
    assert out["error_type"] == "validation" and "hires fix is txt2img-only" in out["error"]
    assert sent(env) == []


def test_https_init_image_is_fetched_once_and_sent_as_base64(env: ReplayServer, https_files: FileServer) -> None:
    https_files.files["/cat.jpg"] = encoded(Image.new("RGB", (96, 64), (9, 9, 9)), "JPEG")
    out = run({"prompt": "a cat", "init_images": [f"{https_files.url}/cat.jpg"], "seed": 1, "steps": 2})
    assert "error" not in out, out
    assert https_files.hits["/cat.jpg"] == 1
    [body] = sent(env)
    assert not body["init_images"][0].startswith("http") and decoded(body["init_images"][0]).size == (96, 64)
    assert (body["width"], body["height"]) == (96, 64)


def test_private_address_init_image_is_refused(env: ReplayServer, https_files: FileServer,
                                               monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    """Without DOWNLOAD_ALLOW_PRIVATE the worker fetches from no loopback/private address (a
    job must not make it reach its own network, e.g. a metadata service)."""
    point_worker_at(monkeypatch, env.url, models_dir, allow_private=False)
    https_files.files["/cat.png"] = b"\x89PNG"
    out = run({"prompt": "a cat", "init_images": [f"{https_files.url}/cat.png"]})
    assert out["error_type"] == "validation" and "init_images[0]" in out["error"]
    assert "loopback, private or link-local" in out["error"]
    assert https_files.hits == {} and sent(env) == []


def test_https_init_image_over_the_size_cap(env: ReplayServer, https_files: FileServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_IMAGE_MAX_BYTES", "1000")
    https_files.files["/big.png"] = b"\x89PNG" + b"\0" * 5000
    out = run({"prompt": "a cat", "init_images": [f"{https_files.url}/big.png"]})
    assert out["error_type"] == "validation" and "INPUT_IMAGE_MAX_BYTES=1000" in out["error"]
    assert sent(env) == []


def test_img2img_fields_need_init_images(env: ReplayServer) -> None:
    out = run({"prompt": "a cat", "mask": image_b64(), "denoising_strength": 0.4})
    assert out["error_type"] == "validation" and "needs 'init_images'" in out["error"]
    assert env.sent("POST", "/sdapi/v1/txt2img") == []


def test_img2img_fields_through_the_escape_hatch_name_the_job_fields(env: ReplayServer) -> None:
    """An init image or a denoising strength slipped in through ``a1111`` would reach A1111
    past every image check: refused, naming the job field to use, before any generation."""
    out = run({"prompt": "a cat", "init_images": [image_b64()],
               "a1111": {"denoising_strength": 0.3, "init_images": ["https://example.com/a.png"], "mask_blur": 2}})
    assert out["error_type"] == "validation", out
    assert "a1111.denoising_strength is set through the job field 'hires' or 'denoising_strength'" in out["error"]
    assert "a1111.init_images is set through the job field 'init_images'" in out["error"]
    assert "a1111.mask_blur is set through the job field 'mask_blur'" in out["error"]
    assert sent(env) == []


def test_init_image_on_the_token_hosts_gets_no_token(env: ReplayServer, https_files: FileServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The local HTTPS server stands in for Hugging Face and Civitai (HF_ENDPOINT, CIVITAI_BASE_URL),
    where model downloads send the operator's tokens: an image a job points there is fetched
    without them, so a job cannot read the operator's private files through img2img."""
    monkeypatch.setenv("HF_ENDPOINT", https_files.url)
    monkeypatch.setenv("CIVITAI_BASE_URL", https_files.url)
    monkeypatch.setenv("HF_TOKEN", "hf_operator_secret")
    monkeypatch.setenv("CIVITAI_TOKEN", "civitai_operator_secret")
    https_files.files["/private/cat.png"] = encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    out = run({"prompt": "a cat", "init_images": [f"{https_files.url}/private/cat.png"], "seed": 1, "steps": 2})
    assert "error" not in out, out
    [seen] = [s for s in https_files.seen if s.path.startswith("/private/cat.png")]
    assert "Authorization" not in seen.headers and "token" not in seen.path
    assert all("operator_secret" not in v for v in seen.headers.values())


def test_wrongly_shaped_image_fields_are_described_not_echoed(env: ReplayServer, caplog) -> None:
    """An image in the wrong shape (a string for the list, a list for the mask, an object in
    the list): the error says what came, never any of the image's data, in the result or the log."""
    image = image_b64()
    caplog.set_level(logging.INFO)
    for inp, where, what in [
        ({"init_images": image}, "init_images must be", f"got a string of {len(image)} characters"),
        ({"init_images": [image], "mask": [image]}, "mask must be", "got a list of 1 item(s)"),
        ({"init_images": [{"data": image}]}, "init_images[0]", "got an object with 1 key(s)"),
    ]:
        out = run({"prompt": "a cat", **inp})
        assert out["error_type"] == "validation" and where in out["error"] and what in out["error"], out
        assert image[:16] not in json.dumps(out)
    assert image[:16] not in caplog.text
    assert sent(env) == []
