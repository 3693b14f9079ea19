"""Malformed safetensors headers, through the real handler: a download whose header is wrong in
any way is refused with a clear error and nothing of it is kept, and a file already on the
volume with such a header is refused by name, never an ``internal`` error.

The files are served over real HTTPS on 127.0.0.1 by the test file server (tests/support/servers.py),
which here simulates a host serving a hostile or broken model file: the framing (8-byte length,
JSON header) is right, the header inside is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache.inspect import NotSafetensors, safetensors_header
from tests.support.jobs import JobRunner
from tests.support.model_files import framed_safetensors, lora_bytes

pytestmark = pytest.mark.usefixtures("fresh_worker_state")

run = JobRunner(job_id="headers")
JOB = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64, "seed": 1}
DEEP = 100_000


def _one(dtype: object = "F32", shape: object = (4,), offsets: object = (0, 16), data: int = 16) -> bytes:
    """One tensor entry with the given fields (lists where a tuple is given), ``data`` bytes of zeros."""
    entry = {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
             "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}
    return framed_safetensors({"w": entry}, data)


F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
# Each of these was taken by the old header reader as a model (kept on the volume) or ended
# the job as an "internal" error.
MALFORMED: dict[str, bytes] = {
    "data_offsets a string": _one(offsets="0,16"),
    "data_offsets of three numbers": _one(offsets=(0, 8, 16)),
    "data_offsets of one number": _one(offsets=(16,)),
    "data_offsets null": _one(offsets=None),
    "data_offsets of booleans": _one("U8", (1,), (False, True), data=1),
    "shape a number": _one(shape=4),
    "shape a string": _one(shape="4"),
    "shape of a list": _one(shape=([4],)),
    "shape of a float": _one(shape=(1.5,), offsets=(0, 4), data=4),
    "shape of negative dims": _one(shape=(-2, -2)),
    "shape of booleans": _one(shape=(True,), offsets=(0, 4), data=4),
    "dtype an object": _one(dtype={"name": "F32"}),
    "dtype null": _one(dtype=None),
    "dtype unknown": _one(dtype="F7"),
    "nested 100,000 deep": framed_safetensors(b'{"w":' + b"[" * DEEP + b"]" * DEEP + b"}", 16),
    "an integer of 5,000 digits": framed_safetensors(
        b'{"w":{"dtype":"F32","shape":[' + b"1" * 5000 + b'],"data_offsets":[0,16]}}', 16),
    "__metadata__ with a number": framed_safetensors({"__metadata__": {"n": 1}, "w": F32_4}, 16),
    "__metadata__ nested": framed_safetensors({"__metadata__": {"n": {"x": "y"}}, "w": F32_4}, 16),
    "overlapping tensors": framed_safetensors({"a": F32_4, "b": F32_4}, 16),
    "a gap between tensors": framed_safetensors(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, 16),
    "a key given twice": framed_safetensors(b'{"w":' + json.dumps(F32_4).encode() + b',"w":'
                                            + json.dumps(F32_4).encode() + b"}", 16),
}
# Refused on download before too (the old end-of-data check), but a file on the volume was
# only framing-checked.
ON_VOLUME_ONLY = {"offsets past the file end": _one(offsets=(0, 16), data=8)}


def volume_files(models_dir: Path) -> list[str]:
    """Every file on the volume but the cache's bookkeeping (registry, locks)."""
    return sorted(p.relative_to(models_dir).as_posix() for p in models_dir.rglob("*")
                  if p.is_file() and p.name != "cache_registry.json" and ".locks" not in p.parts)


@pytest.fixture
def headers_env(worker_env, https_files, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_ATTEMPTS", "1")
    return https_files


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_header_download_is_refused_and_not_kept(headers_env, models_dir, kind):
    headers_env.files["/bad.safetensors"] = MALFORMED[kind]
    url = f"{headers_env.url}/bad.safetensors"
    for inp in ({"action": "prefetch", "loras": [{"url": url, "name": "bad"}]},
                {"action": "prefetch", "checkpoints": [{"url": url}]},
                {**JOB, "loras": [{"url": url, "name": "bad_lora", "weight": 0.5}]}):
        out = run(inp)
        assert out.get("error_type") in {"validation", "download_failed"}, (kind, inp, out)
        assert "not a valid .safetensors file" in json.dumps(out) and "nothing was kept" in json.dumps(out), out
        assert volume_files(models_dir) == [], (kind, volume_files(models_dir))
    assert headers_env.hits["/bad.safetensors"] == 3, "each job downloaded the file and refused it"


def test_well_formed_file_from_the_same_server_is_kept(headers_env, models_dir):
    """The control: the same jobs with a valid file (zero-size and 4-bit tensors included) succeed."""
    headers_env.files["/good.safetensors"] = framed_safetensors(
        {"__metadata__": {"ss_base_model_version": "sd_v1"},
         "empty": {"dtype": "F16", "shape": [0, 4], "data_offsets": [0, 0]},
         "packed": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]},
         "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 20]}}, 20)
    out = run({"action": "prefetch", "loras": [{"url": f"{headers_env.url}/good.safetensors", "name": "good"}]})
    assert "error" not in out, out
    assert volume_files(models_dir) == ["loras/good.safetensors"]


@pytest.mark.parametrize("kind", sorted({**MALFORMED, **ON_VOLUME_ONLY}))
def test_malformed_header_on_the_volume_is_a_clear_error(worker_env, models_dir, kind):
    """A file put on the volume by hand is the operator's: refused by name, left where it is."""
    data = {**MALFORMED, **ON_VOLUME_ONLY}[kind]
    (models_dir / "loras" / "bad.safetensors").write_bytes(data)
    (models_dir / "checkpoints" / "bad_ckpt.safetensors").write_bytes(data)
    for inp, rel in (({"action": "prefetch", "loras": ["bad"]}, "loras/bad.safetensors"),
                     ({"action": "prefetch", "checkpoints": ["bad_ckpt.safetensors"]},
                      "checkpoints/bad_ckpt.safetensors")):
        out = run(inp)
        assert out.get("error_type") == "validation", (kind, inp, out)
        assert f"MODELS_DIR/{rel} is not a valid .safetensors file" in out["error"], out
    assert volume_files(models_dir) == ["checkpoints/bad_ckpt.safetensors", "loras/bad.safetensors"]


def test_valid_lora_on_the_volume_is_still_placed(worker_env, models_dir):
    (models_dir / "loras" / "fine.safetensors").write_bytes(lora_bytes())
    out = run({"action": "prefetch", "loras": ["fine"]})
    assert "error" not in out and out["models"][0]["path"] == "loras/fine.safetensors", out


@pytest.mark.parametrize("kind", sorted({**MALFORMED, **ON_VOLUME_ONLY}))
def test_header_reader_raises_only_not_safetensors(tmp_path, kind):
    path = tmp_path / "m.safetensors"
    path.write_bytes({**MALFORMED, **ON_VOLUME_ONLY}[kind])
    with pytest.raises(NotSafetensors):
        safetensors_header(path)
