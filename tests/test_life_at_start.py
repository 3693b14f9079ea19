"""Start-time models (cache/at_start.py, start.sh, a1111/start_only.py).

start.sh runs for real with a stand-in A1111 (a wrapper that records which model files
exist when it starts, then becomes the replay server); the models come from the HTTPS
FileServer. The job-side check runs through handler.handler against the replay server.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.jobs import JobRunner, txt2img_bodies
from tests.support.ports import free_port
from tests.support.worker import child_env, running_worker, write_catalog

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PICKLE_BYTES = b"\x80\x04\x95stand-in upscaler weights"  # never loaded: only placed and hashed
DETECTOR_BYTES = b"\x80\x04\x95stand-in detector weights"


def _entry(id_: str, kind: str, file: str, url: str, data: bytes | None, **extra: object) -> dict:
    return {"id": id_, "kind": kind, "file": file, "source": {"url": url},
            "sha256": hashlib.sha256(data).hexdigest() if data is not None else None, **extra}


def _start(tmp_path: Path, catalog: Path, ca_pem: Path, **extra: str) -> subprocess.CompletedProcess:
    """Run start.sh with a stand-in A1111 that records, when it starts, which model files exist,
    and a handler that only waits for that record."""
    models = tmp_path / "volume" / "models"
    seen = tmp_path / "seen.txt"
    wrapper = tmp_path / "a1111-standin.sh"
    wrapper.write_text("#!/bin/sh\n"
                       f"(cd {models} && find . -type f -not -path './.*' | sort) > {seen}.tmp\n"
                       f"mv {seen}.tmp {seen}\n"
                       f'exec {PY} -m tests.replay "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "handler.py").write_text(f"import pathlib, time\nfor _ in range(400):\n"
                                         f"    if pathlib.Path({str(seen)!r}).exists():\n        break\n"
                                         "    time.sleep(0.05)\n")
    env = child_env(
        A1111_CMD=str(wrapper), A1111_PORT=str(free_port()), A1111_STATE_DIR=str(tmp_path / "state"),
        A1111_LOG_ECHO="0", MODELS_DIR=str(models), MODELS_CATALOG=str(catalog), HANDLER_PYTHON=PY,
        HANDLER_CMD=f"{PY} {tmp_path / 'handler.py'}", DOWNLOAD_ALLOW_PRIVATE="1",
        REQUESTS_CA_BUNDLE=str(ca_pem), PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return subprocess.run(["bash", str(ROOT / "start.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=90)


@pytest.mark.slow
def test_start_sh_places_start_models_before_a1111_starts(tmp_path, https_files):
    """Flagged entries for this backend and START_MODELS ids are on the volume when A1111's
    command starts; an entry for the other backend is not fetched; a failing source and an
    unknown id are logged and A1111 starts anyway."""
    base = https_files.url
    https_files.files["/up.pth"] = PICKLE_BYTES
    https_files.files["/det.pt"] = DETECTOR_BYTES
    https_files.files["/forge-only.pth"] = PICKLE_BYTES
    catalog = write_catalog(tmp_path / "models.json", [
        _entry("tiny_up", "upscaler", "4x-Tiny.pth", f"{base}/up.pth", PICKLE_BYTES, at_start=True),
        _entry("tiny_det", "adetailer", "tiny_det.pt", f"{base}/det.pt", DETECTOR_BYTES),
        _entry("forge_up", "upscaler", "4x-Forge.pth", f"{base}/forge-only.pth", PICKLE_BYTES, at_start=["forge"]),
        _entry("gone_up", "upscaler", "4x-Gone.pth", f"{base}/missing.pth", PICKLE_BYTES, at_start=True),
    ])
    proc = _start(tmp_path, catalog, https_files.ca_pem, START_MODELS="tiny_det, no_such_id", WEBUI_BACKEND="a1111")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = (tmp_path / "seen.txt").read_text().split()
    assert "./upscalers/4x-Tiny.pth" in seen and "./adetailer/tiny_det.pt" in seen  # before A1111 ran
    assert "./upscalers/4x-Forge.pth" not in seen and "/forge-only.pth" not in https_files.hits
    models = tmp_path / "volume" / "models"
    assert (models / "upscalers" / "4x-Tiny.pth").read_bytes() == PICKLE_BYTES
    assert "gone_up NOT placed (A1111 starts without it)" in proc.stderr
    assert "no_such_id NOT placed" in proc.stderr and "not a catalog id" in proc.stderr
    assert "some start-time models were not placed" in proc.stderr
    assert "starting A1111" in proc.stderr  # and it was started: the stand-in wrote seen.txt


@pytest.mark.slow
def test_start_models_none_places_nothing(tmp_path, https_files):
    https_files.files["/up.pth"] = PICKLE_BYTES
    catalog = write_catalog(tmp_path / "models.json", [
        _entry("tiny_up", "upscaler", "4x-Tiny.pth", f"{https_files.url}/up.pth", PICKLE_BYTES, at_start=True)])
    proc = _start(tmp_path, catalog, https_files.ca_pem, START_MODELS="none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "./upscalers/4x-Tiny.pth" not in (tmp_path / "seen.txt").read_text().split()
    assert "/up.pth" not in https_files.hits and "[start-models]" not in proc.stderr


def test_pickle_without_pin_is_refused_at_start_and_logged(tmp_path, https_files, monkeypatch):
    """A pickle entry without a sha256 pin is not placed at start (the catalog's pin is the
    per-entry allowance); the reason is logged and the exit status says so."""
    from cache import at_start

    https_files.files["/up.pth"] = PICKLE_BYTES
    catalog = write_catalog(tmp_path / "models.json", [
        _entry("tiny_up", "upscaler", "4x-Tiny.pth", f"{https_files.url}/up.pth", None, at_start=True)])
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MODELS_CATALOG", str(catalog))
    monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    monkeypatch.delenv("START_MODELS", raising=False)
    monkeypatch.delenv("ALLOW_PICKLE_MODELS", raising=False)
    [outcome] = at_start.run()
    assert not outcome.ok and "pickled format" in outcome.detail and "ALLOW_PICKLE_MODELS" in outcome.detail
    assert "/up.pth" not in https_files.hits
    assert at_start.main() == 1


def test_catalog_at_start_must_be_a_flag_or_backends():
    from cache.catalog import Catalog
    from schemas.errors import CatalogError

    with pytest.raises(CatalogError, match="at_start must be true, false or a list of backends"):
        Catalog.from_dict({"models": [{"id": "x", "kind": "upscaler", "file": "x.pth", "at_start": ["comfy"]}]})
    assert Catalog.from_dict({"models": [{"id": "x", "kind": "upscaler", "file": "x.pth",
                                          "at_start": True}]}).get("x").at_start == ("a1111", "forge")


UPSCALER = {"id": "4x-UltraSharp", "kind": "upscaler", "file": "4x-UltraSharp.pth",
            "source": {"hf": "lokCX/4x-Ultrasharp", "file": "4x-UltraSharp.pth"}, "sha256": None}
DETECTOR = {"id": "hand_yolov8s.pt", "kind": "adetailer", "file": "hand_yolov8s.pt",
            "source": {"hf": "Bingsu/adetailer", "file": "hand_yolov8s.pt"}, "sha256": None, "at_start": True}
RUN = JobRunner(base={"prompt": "a red rubber tile", "width": 64, "height": 64, "steps": 2})


def test_absent_start_only_models_say_how_to_get_them_without_generating(monkeypatch, tmp_path, models_dir):
    catalog = write_catalog(tmp_path / "models.json", [UPSCALER, DETECTOR])
    with running_worker("a1111", monkeypatch, tmp_path, models_dir, catalog) as srv:
        result = RUN.fields(hires={"upscaler": "4x-UltraSharp", "scale": 1.5},
                            adetailer=[{"model": "hand_yolov8s.pt"}])
        assert result["error_type"] == "model_not_found", result
        details = {d["field"]: d["message"] for d in result["details"]}
        up = details["hires.upscaler"]
        assert "add 4x-UltraSharp to START_MODELS (catalog id '4x-UltraSharp') and restart the worker" in up
        assert "MODELS_DIR/upscalers/4x-UltraSharp.pth" in up and "ALLOW_PICKLE_MODELS=1" in up
        det = details["adetailer[0].model"]
        assert "flagged at_start" in det and "[start-models]" in det and "restart the worker" in det
        assert txt2img_bodies(srv) == []
        assert not (models_dir / "upscalers" / "4x-UltraSharp.pth").exists()  # nothing fetched at job time


def test_start_only_model_on_the_volume_but_unlisted_asks_for_a_restart(monkeypatch, tmp_path, models_dir):
    catalog = write_catalog(tmp_path / "models.json", [UPSCALER])
    (models_dir / "upscalers" / "4x-UltraSharp.pth").write_bytes(PICKLE_BYTES)  # arrived after A1111 started
    with running_worker("a1111", monkeypatch, tmp_path, models_dir, catalog) as srv:
        result = RUN.fields(hires={"upscaler": "4x-UltraSharp", "scale": 1.5})
        assert result["error_type"] == "model_not_found", result
        assert "MODELS_DIR/upscalers/4x-UltraSharp.pth is on the volume" in result["error"]
        assert "restart the worker" in result["error"]
        assert txt2img_bodies(srv) == []


def test_names_outside_the_catalog_keep_the_plain_message(monkeypatch, tmp_path, models_dir):
    catalog = write_catalog(tmp_path / "models.json", [UPSCALER])
    with running_worker("a1111", monkeypatch, tmp_path, models_dir, catalog):
        result = RUN.fields(hires={"upscaler": "5x-Unknown", "scale": 1.5})
    assert result["error_type"] == "model_not_found", result
    assert "START_MODELS" not in json.dumps(result)
    assert "'5x-Unknown' is not an upscaler this server lists" in result["error"]
