"""The replay server itself: it must serve recordings faithfully, since every other test trusts it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.replay import RECORDINGS, ReplayServer


def test_serves_recorded_bodies_unchanged(replay: ReplayServer) -> None:
    for route, name in [("/sdapi/v1/samplers", "get_samplers"), ("/sdapi/v1/sd-models", "get_sd_models")]:
        got = requests.get(replay.url + route, timeout=5)
        want = json.loads((RECORDINGS / "a1111" / f"{name}.json").read_text())["response"]
        assert got.status_code == want["status"]
        assert got.json() == want["json"]


def test_records_requests_and_switches_recordings(replay: ReplayServer) -> None:
    replay.respond("POST", "/sdapi/v1/txt2img", "txt2img_loras_two")
    r = requests.post(replay.url + "/sdapi/v1/txt2img", json={"prompt": "x"}, timeout=5)
    assert r.status_code == 200
    assert "detail_tweaker" in json.loads(r.json()["info"])["prompt"]
    assert replay.sent("POST", "/sdapi/v1/txt2img") == [{"prompt": "x"}]


def test_unknown_route_and_wrong_method_use_recorded_shapes(replay: ReplayServer) -> None:
    assert requests.get(replay.url + "/nope", timeout=5).json() == {"detail": "Not Found"}
    r = requests.get(replay.url + "/sdapi/v1/txt2img", timeout=5)
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})


def test_forge_profile_serves_forge_recordings(forge_replay: ReplayServer) -> None:
    r = requests.get(forge_replay.url + "/sdapi/v1/sd-modules", timeout=5)
    assert r.status_code == 200 and isinstance(r.json(), list)
    assert requests.get(forge_replay.url + "/sdapi/v1/sd-vae", timeout=5).status_code == 404


def test_faults_drop_and_status_then_recover(replay: ReplayServer) -> None:
    replay.fault("POST", "/sdapi/v1/txt2img", "drop", times=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(replay.url + "/sdapi/v1/txt2img", json={}, timeout=5)
    body = replay.recording("txt2img_steps_0_500")["response"]["json"]
    replay.fault("POST", "/sdapi/v1/txt2img", "status", status=500, body=body, times=1)
    r = requests.post(replay.url + "/sdapi/v1/txt2img", json={}, timeout=5)
    assert (r.status_code, r.json()["error"]) == (500, "ZeroDivisionError")
    assert requests.post(replay.url + "/sdapi/v1/txt2img", json={}, timeout=5).status_code == 200


def test_delayed_generation_advances_progress_and_obeys_interrupt(replay: ReplayServer) -> None:
    replay.delay("POST", "/sdapi/v1/txt2img", 5.0)
    out: dict = {}
    url = replay.url + "/sdapi/v1/txt2img"
    t = threading.Thread(target=lambda: out.update(r=requests.post(url, json={}, timeout=10)))
    start = time.monotonic()
    t.start()
    time.sleep(0.3)
    p = requests.get(replay.url + "/sdapi/v1/progress", timeout=5).json()
    assert p["state"]["job_count"] != 0  # a mid-generation poll, not the idle one
    requests.post(replay.url + "/sdapi/v1/interrupt", timeout=5)
    t.join(5)
    assert time.monotonic() - start < 3
    want = replay.recording("txt2img_interrupted_mid_generation")["response"]["json"]
    assert out["r"].json() == want


def test_models_dir_listing_emulates_folder_scan(tmp_path, replay: ReplayServer) -> None:
    header = json.dumps({"__metadata__": {"ss_base_model_version": "sdxl_base_v1-0"},
                         "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "new_lora.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    replay.models_dir = tmp_path
    names = [e["name"] for e in requests.get(replay.url + "/sdapi/v1/loras", timeout=5).json()]
    assert names[-1] == "new_lora" and "detail_tweaker" in names


def test_runs_by_hand_and_ignores_a1111_flags(tmp_path) -> None:
    argv_file = tmp_path / "argv"
    proc = subprocess.Popen([sys.executable, "-m", "tests.replay", "--port", "0", "--api", "--nowebui",
                             "--xformers", "--argv-file", str(argv_file)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving on http://127.0.0.1:" in line
        assert "--nowebui" in argv_file.read_text()
    finally:
        proc.terminate()
        proc.wait(5)
