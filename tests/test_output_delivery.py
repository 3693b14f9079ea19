"""Output delivery without a bucket: options, PNG pass-through, header checks, jpeg/webp
conversion with the infotext carried over, and the real-size check.

Inputs are the PNGs a real A1111 v1.10.1 returned (tests/recordings/a1111), packaged the way
a1111/results.py does (images, seeds from info.all_seeds, parameters = the body sent, and the
facts per image recorded beside them)."""

from __future__ import annotations

import base64
import io
import json

import piexif
import piexif.helper
import pytest
from PIL import Image

from a1111.resolved import Resolved
from a1111.results import asked_size, combine, package
from output.bucket import find_bucket
from output.delivery import deliver, preflight, serialized_size
from output.images import convert, exif_user_comment, image_info
from schemas.errors import ResultTooLarge, UploadFailed, ValidationFailed, error_result
from schemas.job import parse_job
from schemas.output import ImageFacts, OutputOptions, Packaged, parse_s3_config
from schemas.settings import Settings
from tests.replay import RECORDINGS
from tests.support.jobs import deliver_result, packaged, recorded_result


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME",
                 "MAX_RESULT_MB"):
        monkeypatch.delenv(name, raising=False)
    return Settings.from_env()


def small_limit(monkeypatch: pytest.MonkeyPatch, mb: str) -> Settings:
    monkeypatch.setenv("MAX_RESULT_MB", mb)
    return Settings.from_env()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def user_comment(im: Image.Image) -> str:
    """Read the infotext back the way A1111 v1.10 does (modules/images.py read_info_from_image)."""
    exif = piexif.load(im.info["exif"])
    return piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment])


# --------------------------------------------------------------------------- options
def test_output_options_defaults_and_limits():
    opts = OutputOptions()
    assert (opts.format, opts.quality, opts.upload) == ("png", None, "auto")
    assert OutputOptions(format="jpeg").effective_quality() == 90
    assert OutputOptions(format="webp", quality=1).effective_quality() == 1
    for bad in ({"format": "gif"}, {"format": "jpeg", "quality": 0}, {"format": "jpeg", "quality": 101},
                {"upload": "sometimes"}, {"format": "png", "quality": 80}, {"size": 3},
                {"format": "jpeg", "quality": "80"}):
        with pytest.raises(ValueError):
            OutputOptions.model_validate(bad)


def test_output_errors_through_the_job_schema_name_the_field():
    with pytest.raises(ValidationFailed) as exc:
        parse_job({"prompt": "x", "output": {"format": "png", "quality": 80}})
    assert exc.value.details[0]["field"] == "output"
    assert "'quality' applies only to format 'jpeg' or 'webp'" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        parse_job({"prompt": "x", "output": {"upload": "maybe"}})
    assert exc.value.details[0]["field"] == "output.upload"
    assert "'auto'" in exc.value.message and "'never'" in exc.value.message and "'always'" in exc.value.message


def test_bad_s3config_names_the_field_and_never_echoes_values():
    secret = "s3cr3t-VALUE-that-must-not-leak"
    cases = [
        ({"endpointUrl": "http://x", "accessId": "AKIDLEAK"}, "s3Config.accessSecret"),
        ({"endpointUrl": "ftp://x", "accessId": "AKIDLEAK", "accessSecret": secret}, "s3Config.endpointUrl"),
        ({"endpointUrl": "http://x", "accessId": "AKIDLEAK", "accessSecret": secret, "region": "eu"},
         "s3Config.region"),
        ({"endpointUrl": "http://x", "accessId": 12, "accessSecret": secret}, "s3Config.accessId"),
    ]
    for raw, field in cases:
        with pytest.raises(ValidationFailed) as exc:
            parse_s3_config(raw)
        text = json.dumps(error_result(exc.value))
        assert field in text
        assert secret not in text and "AKIDLEAK" not in text
    with pytest.raises(ValidationFailed, match="s3Config must be an object"):
        parse_s3_config("http://key:secret@host")
    assert parse_s3_config(None) is None
    bucket, _ = find_bucket({"endpointUrl": "https://u:p@h:9000", "accessId": "AKIDLEAK", "accessSecret": secret})
    assert secret not in repr(bucket) and "AKIDLEAK" not in repr(bucket)
    assert bucket.host == "h:9000" and bucket.source == "s3Config"


# --------------------------------------------------------------------------- headers
@pytest.mark.parametrize("name", ["txt2img_minimal", "txt2img_batch_size_2", "txt2img_hires_latent",
                                  "txt2img_width_70", "txt2img_concurrent_first"])
def test_header_reading_matches_pillow_on_recorded_pngs(name):
    for b64 in recorded_result(name)["images"]:
        info = image_info(b64)
        with decode(b64) as im:
            assert info is not None and (info.format, info.width, info.height) == ("png", im.width, im.height)


def test_header_reading_of_other_formats_and_garbage():
    png = recorded_result("txt2img_minimal")["images"][0]
    data, info, _ = convert(base64.b64decode(png), "jpeg", 80)
    assert image_info(base64.b64encode(data).decode()) == info
    assert (info.format, info.width, info.height) == ("jpeg", 64, 64)
    assert image_info("not base64 at all!") is None
    assert image_info(base64.b64encode(b"GIF89a but not really").decode()) is None
    assert image_info(None) is None


def test_asked_size_follows_a1111_hires_rules():
    assert asked_size({"width": 64, "height": 64}) == (64, 64)
    assert asked_size({"width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.5}) == (96, 96)
    assert asked_size({"width": 512, "height": 768, "enable_hr": True}) == (1024, 1536)  # A1111 default 2.0
    assert asked_size({"width": 512, "height": 768, "enable_hr": True, "hr_resize_x": 1024}) == (1024, 1536)
    assert asked_size({"width": 512, "height": 768, "enable_hr": True, "hr_resize_y": 1152}) == (768, 1152)
    assert asked_size({"width": 512, "height": 768, "enable_hr": True, "hr_resize_x": 640,
                       "hr_resize_y": 640}) == (640, 640)
    assert asked_size({"prompt": "no size"}) is None


def test_plan_of_a_preset_result_with_labels_and_an_extra_image():
    a, b = recorded_result("txt2img_minimal"), recorded_result("txt2img_hires_latent")
    ran = Resolved("model_a.safetensors", "model_a", None, "Euler", "Automatic")
    steps = [(label, package({"images": r["images"], "info": r["info"]}, r["parameters"], ran))
             for label, r in (("preview", a), ("final", b))]
    combined = combine(steps, [("color_map", "<colour map>")])
    assert combined.result["labels"] == ["preview", "final", "color_map"]
    plan = combined.images
    assert [p.size for p in plan] == [(64, 64), (96, 96), None]
    assert [p.seed for p in plan] == [a["seeds"][0], b["seeds"][0], None]


def test_facts_of_a_plain_job_with_control_maps_and_an_extra_image():
    rec = json.loads((RECORDINGS / "a1111" / "ext_txt2img_controlnet_canny_with_model.json").read_text())
    step = package(rec["response"]["json"], rec["request"]["json"], Resolved("m", "", None, "Euler", "Automatic"),
                   return_control_maps=True)
    size = asked_size(rec["request"]["json"])
    assert step.images == [ImageFacts(step.result["seeds"][0], size), ImageFacts()]
    assert combine([(None, step)]) is step and "labels" not in step.result
    combined = combine([(None, step)], [("colormap", "<colour map>")])
    assert combined.result["labels"] == ["image", "image", "colormap"]
    assert combined.result["images"] == [*step.result["images"], "<colour map>"]
    assert [f.size for f in combined.images] == [size, None, None]
    assert len(step.result["images"]) == 2  # the step's own output is left as it was


# --------------------------------------------------------------------------- png pass-through + checks
def test_png_default_passes_a1111_base64_through_untouched(settings):
    result = recorded_result("txt2img_batch_size_2")
    originals = list(result["images"])
    out = deliver_result(result, None, settings, "job-1", None)
    assert all(new is old for new, old in zip(out["images"], originals, strict=True))  # same objects: no re-encode
    assert out["warnings"] == []
    assert out["delivery"] == {"format": "png", "uploaded": False, "inline_bytes": serialized_size(
        {k: v for k, v in out.items() if k != "delivery"})}


def test_hires_result_is_checked_against_the_scaled_size(settings):
    result = recorded_result("txt2img_hires_latent")
    assert [fact.size for fact in packaged(result).images] == [(96, 96)]
    assert deliver_result(result, None, settings, "j", None)["warnings"] == []
    # the same image against a job that asked for no hires fix: a warning, not an error
    result["parameters"]["enable_hr"] = False
    out = deliver_result(result, None, settings, "j", None)
    assert out["warnings"] == ["image 0 is 96x96, but 64x64 was asked"]


def test_width_70_size_mismatch_is_a_warning(settings):
    out = deliver_result(recorded_result("txt2img_width_70"), None, settings, "j", None)
    assert out["warnings"] == ["image 0 is 64x64, but 70x64 was asked (A1111 rounds sizes down to a multiple of 8)"]
    assert len(out["images"]) == 1


def test_explicit_expected_sizes_and_wrong_format_warn(settings):
    result = recorded_result("txt2img_minimal")
    jpeg, _, _ = convert(base64.b64decode(result["images"][0]), "jpeg", 80)
    result["images"] = [base64.b64encode(jpeg).decode(), "AAAA"]
    out = deliver(Packaged(result, [ImageFacts(size=(128, 64)), ImageFacts()]), preflight(None, None), settings, "j")
    assert out["warnings"] == [
        "image 0 is JPEG, not the PNG expected (A1111's 'samples_format' setting decides the API's format)",
        "image 0 is 64x64, but 128x64 was asked",
        "image 1 is not a readable PNG, JPEG or WebP image",
    ]


# --------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_conversion_keeps_the_infotext_where_a1111_reads_it(settings, fmt):
    result = recorded_result("txt2img_batch_size_2")
    texts = []
    for b64 in result["images"]:
        with decode(b64) as im:
            texts.append(im.info["parameters"])
    out = deliver_result(result, OutputOptions(format=fmt, quality=70), settings, "j", None)
    assert out["warnings"] == []
    for b64, text in zip(out["images"], texts, strict=True):
        with decode(b64) as im:
            assert im.format == fmt.upper() and im.size == (64, 64)
            assert user_comment(im) == text and "Steps:" in text
    assert out["delivery"]["format"] == fmt


def test_quality_changes_the_bytes(settings):
    result = recorded_result("txt2img_concurrent_first")  # 128x128
    low = deliver_result(dict(result), OutputOptions(format="jpeg", quality=5), settings, "j", None)
    high = deliver_result(dict(result), OutputOptions(format="jpeg", quality=95), settings, "j", None)
    assert len(low["images"][0]) < len(high["images"][0])


def test_rgba_and_palette_images_convert(settings):
    for mode in ("RGBA", "P", "LA"):
        buf = io.BytesIO()
        Image.new(mode, (40, 24)).save(buf, "PNG")
        result = {"images": [base64.b64encode(buf.getvalue()).decode()], "seeds": [], "parameters": {}}
        for fmt in ("jpeg", "webp"):
            out = deliver_result(result, OutputOptions(format=fmt), settings, "j", None)
            with decode(out["images"][0]) as im:
                assert (im.format, im.size) == (fmt.upper(), (40, 24))


def test_infotext_too_long_for_jpeg_exif_is_a_warning_not_a_failure(settings):
    buf = io.BytesIO()
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "x" * 40_000)  # 80 KB in UTF-16: over JPEG's 64 KB APP1
    Image.new("RGB", (16, 16)).save(buf, "PNG", pnginfo=meta)
    result = {"images": [base64.b64encode(buf.getvalue()).decode()], "seeds": [1], "parameters": {}}
    out = deliver_result(result, OutputOptions(format="jpeg"), settings, "j", None)
    assert any("too long for a JPEG" in w for w in out["warnings"])
    with decode(out["images"][0]) as im:
        assert im.format == "JPEG"
    # the longest infotext that fits: 65533 bytes of EXIF = 58 bytes of structure + 2 per UTF-16 unit
    for length, fits in ((32_737, True), (32_738, False)):
        assert (len(exif_user_comment("y" * length)) <= 65533) is fits
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", "y" * length)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, "PNG", pnginfo=meta)
        edge = deliver_result({"images": [base64.b64encode(buf.getvalue()).decode()], "seeds": [1], "parameters": {}},
                       OutputOptions(format="jpeg"), settings, "j", None)
        with decode(edge["images"][0]) as im:
            assert ("exif" in im.info) is fits and (edge["warnings"] == []) is fits
    webp = deliver_result(result, OutputOptions(format="webp"), settings, "j", None)
    with decode(webp["images"][0]) as im:
        assert user_comment(im) == "x" * 40_000


def test_exif_user_comment_is_what_piexif_writes_semantically():
    text = "a cat, <lora:detail:0.8>, ünïcødé 日本\nSteps: 20"
    ours = piexif.load(exif_user_comment(text))
    theirs = piexif.load(piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(
        text, encoding="unicode")}}))
    assert ours["Exif"][piexif.ExifIFD.UserComment] == theirs["Exif"][piexif.ExifIFD.UserComment]


# --------------------------------------------------------------------------- size
def test_serialized_size_is_the_sdk_body_length():
    result = {"images": ["A" * 1000], "warnings": ["ünï"], "info": {"t": "日本"}}
    body = json.dumps({"output": result}, ensure_ascii=False).encode("utf-8")
    assert serialized_size(result) == len(body)


def test_over_the_limit_without_a_bucket_names_size_and_both_fixes(settings, monkeypatch):
    settings = small_limit(monkeypatch, "0.01")  # 10 kB; two 64x64 PNGs are ~25 kB of JSON
    result = recorded_result("txt2img_batch_size_2")
    size = serialized_size({**result, "warnings": []})
    with pytest.raises(ResultTooLarge) as exc:
        deliver_result(result, None, settings, "j", None)
    out = error_result(exc.value)
    assert out["error_type"] == "result_too_large"
    msg = out["error"]
    assert msg.startswith(f"result_too_large: the result is {size / 1000:.1f} kB, over the 10.0 kB limit "
                          "(MAX_RESULT_MB)")
    assert "fewer or smaller images" in msg and "BUCKET_ENDPOINT_URL" in msg and "s3Config" in msg
    assert out["result_bytes"] == size and out["limit_bytes"] == 10_000


def test_upload_never_over_the_limit_fails_even_with_a_bucket(settings, monkeypatch):
    settings = small_limit(monkeypatch, "0.01")
    # a bucket that would fail if contacted: 'never' must not try it
    s3 = {"endpointUrl": "http://127.0.0.1:9", "accessId": "a", "accessSecret": "b", "bucketName": "out"}
    with pytest.raises(ResultTooLarge, match="allow an upload"):
        deliver_result(recorded_result("txt2img_batch_size_2"), OutputOptions(upload="never"), settings, "j", s3)


def test_jpeg_brings_a_result_under_the_limit(settings, monkeypatch):
    settings = small_limit(monkeypatch, "0.01")
    out = deliver_result(recorded_result("txt2img_batch_size_2"), OutputOptions(format="jpeg", quality=50),
                  settings, "j", None)
    assert out["delivery"]["inline_bytes"] <= 10_000 and not out["delivery"]["uploaded"]


def test_upload_always_without_a_bucket_is_a_clear_error(settings):
    with pytest.raises(UploadFailed, match="output.upload is 'always' but no bucket is configured"):
        deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"), settings, "j", None)


def test_incomplete_bucket_environment_is_named(settings, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", "hidden-secret")
    with pytest.raises(UploadFailed) as exc:
        deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"), settings, "j", None)
    assert "BUCKET_ACCESS_KEY_ID not set" in exc.value.message and "hidden-secret" not in exc.value.message


def test_result_size_fast_path_equals_the_exact_size():
    from output.delivery import result_size

    images = [base64.b64encode(bytes(range(256)) * 400).decode("ascii") for _ in range(3)]
    result = {"images": images, "info": {"prompt": "ünïcode \"quoted\""}, "seeds": [1, 2, 3]}
    exact = serialized_size(result)
    assert result_size(result, limit=10 * exact) == exact       # far from the limit: counted, not encoded
    assert result_size(result, limit=exact) == exact            # near the limit: measured exactly
    odd = {**result, "images": images + ["not ascii: é"]}      # not base64: measured exactly
    assert result_size(odd, limit=10 * exact) == serialized_size(odd)
    escaped = {**result, "images": images + ['needs "escapes"\n']}  # near the limit escapes are counted
    assert result_size(escaped, limit=serialized_size(escaped)) == serialized_size(escaped)
