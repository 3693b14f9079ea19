"""The upscale action through handler.handler against the replay A1111 (recordings
``extra_*``, ``get_upscalers``): the extras body, the upscaled images at the asked size,
and upscaler names checked (or placed) before any extras request."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.contract import EXTRAS_BATCH_PATH, EXTRAS_SINGLE_PATH, request_problems
from tests.replay import ReplayServer
from tests.support.images import decoded, image_b64
from tests.support.jobs import JobRunner
from tests.support.servers import FileServer
from tests.support.worker import point_worker_at, reset_worker_state, warm_up, write_catalog

run = JobRunner(job_id="up", base={"action": "upscale"})


@pytest.fixture
def env(worker_env: ReplayServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ReplayServer:
    monkeypatch.setenv("MODELS_CATALOG", str(tmp_path / "no-catalog.json"))
    warm_up(worker_env)
    return worker_env


def extras(srv: ReplayServer) -> list[dict]:
    bodies = [(p, b) for p in (EXTRAS_SINGLE_PATH, EXTRAS_BATCH_PATH) for b in srv.sent("POST", p)]
    for path, body in bodies:
        assert request_problems(body, path) == [], path
    return [b for _, b in bodies]


def recorded_input(srv: ReplayServer) -> str:
    return srv.recording("extra_single_image_nearest_2x")["request"]["json"]["image"]


def test_one_image_is_upscaled_to_the_asked_size(env: ReplayServer) -> None:
    image = recorded_input(env)
    out = run({"images": [image], "upscaler_1": "Nearest", "upscaling_resize": 2})
    assert "error" not in out, out
    [body] = env.sent("POST", EXTRAS_SINGLE_PATH)
    assert (body["upscaler_1"], body["upscaling_resize"], body["resize_mode"]) == ("Nearest", 2, 0)
    assert decoded(out["images"][0]).size == (128, 128) == tuple(2 * v for v in decoded(image).size)
    assert out["warnings"] == [] and out["seeds"] == [] and "Nearest" in out["info"]["html_info"]
    assert out["parameters"]["image"].endswith("characters omitted>")
    assert len(extras(env)) == 1


def test_a_target_size_uses_resize_mode_1(env: ReplayServer) -> None:
    out = run({"images": [recorded_input(env)], "upscaler_1": "nearest",
               "upscaling_resize_w": 128, "upscaling_resize_h": 128})
    assert "error" not in out, out
    [body] = extras(env)
    assert (body["resize_mode"], body["upscaling_resize_w"], body["upscaling_resize_h"], body["upscaler_1"]) \
        == (1, 128, 128, "Nearest")  # the name as A1111 lists it
    assert out["warnings"] == []


def test_several_images_go_to_the_batch_route(env: ReplayServer) -> None:
    image = recorded_input(env)
    out = run({"images": [image, image], "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert "error" not in out, out
    [body] = env.sent("POST", EXTRAS_BATCH_PATH)
    assert [e["name"] for e in body["imageList"]] == ["0.png", "1.png"]
    assert [decoded(i).size for i in out["images"]] == [(128, 128)] * 2 and out["warnings"] == []
    assert len(extras(env)) == 1


def test_unknown_upscaler_is_refused_before_extras(env: ReplayServer) -> None:
    out = run({"images": [image_b64()], "upscaler_1": "R-ESRGAN 4x plus"})
    assert out["error_type"] == "validation" and "upscaler_1: unknown upscaler 'R-ESRGAN 4x plus'" in out["error"]
    assert "R-ESRGAN 4x+" in out["details"][0]["suggestions"]
    assert extras(env) == [] and not out.get("refresh_worker")


def test_upscale_needs_its_fields(env: ReplayServer) -> None:
    out = run({"images": [image_b64()], "upscaling_resize_w": 256, "prompt": "x"})
    fields = {d["field"] for d in out["details"]}
    assert out["error_type"] == "validation" and {"upscaler_1", "upscaling_resize_h", "prompt"} <= fields
    assert extras(env) == []


def test_bad_upscale_image_is_named(env: ReplayServer) -> None:
    out = run({"images": [image_b64(), "not-base64!"], "upscaler_1": "Lanczos"})
    assert out["error_type"] == "validation" and out["error"].startswith("images[1] is not valid base64")
    assert extras(env) == []


UPSCALER = b"stand-in ESRGAN weights (a pickle in real life)"


def _catalog(tmp_path: Path, url: str, sha256: str | None) -> Path:
    return write_catalog(tmp_path / "models.json", [{
        "id": "4x-UltraSharp", "kind": "upscaler", "file": "4x-UltraSharp.pth", "family": None,
        "source": {"url": url}, "sha256": sha256, "description": "test upscaler"}])


def test_catalog_upscaler_is_placed_and_usable_after_a_restart(env: ReplayServer, https_files: FileServer,
                                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               models_dir: Path) -> None:
    """A1111 v1.10 reads its upscaler folder only at start (the replay server lists the files
    present when it started): the job places the file, says so, asks for a fresh worker;
    the next A1111 lists it and the same job runs."""
    https_files.files["/4x-UltraSharp.pth"] = UPSCALER
    catalog = _catalog(tmp_path, f"{https_files.url}/4x-UltraSharp.pth", hashlib.sha256(UPSCALER).hexdigest())
    monkeypatch.setenv("MODELS_CATALOG", str(catalog))
    job = {"images": [recorded_input(env)], "upscaler_1": "4x-UltraSharp"}
    out = run(job)
    assert out["error_type"] == "model_not_found" and out["refresh_worker"] is True
    assert "placed in MODELS_DIR/upscalers/4x-UltraSharp.pth" in out["error"] and "restarts" in out["error"]
    assert (models_dir / "upscalers" / "4x-UltraSharp.pth").read_bytes() == UPSCALER
    assert extras(env) == []

    reset_worker_state()  # the restart: a new worker and a new A1111 that scans the folder
    with ReplayServer("a1111", models_dir=models_dir) as fresh:
        point_worker_at(monkeypatch, fresh.url, models_dir)
        warm_up(fresh)
        out = run(job)
        assert "error" not in out, out
        assert fresh.sent("POST", EXTRAS_SINGLE_PATH)[0]["upscaler_1"] == "4x-UltraSharp"
    assert https_files.hits["/4x-UltraSharp.pth"] == 1


def test_unpinned_pickle_upscaler_is_not_placed(env: ReplayServer, https_files: FileServer,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                models_dir: Path) -> None:
    https_files.files["/4x-UltraSharp.pth"] = UPSCALER
    monkeypatch.setenv("MODELS_CATALOG", str(_catalog(tmp_path, f"{https_files.url}/4x-UltraSharp.pth", None)))
    out = run({"images": [image_b64()], "upscaler_1": "4x-UltraSharp"})
    assert out["error_type"] == "validation" and "pickled format" in out["error"]
    assert not out.get("refresh_worker") and https_files.hits == {}
    assert list((models_dir / "upscalers").iterdir()) == [] and extras(env) == []
    assert "4x-UltraSharp" in json.dumps(out)
