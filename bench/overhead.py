"""How much time does the handler add to a generation?

Compares, against the same local server in the same run:
- direct:  POST the txt2img body to the server and decode the JSON answer (what any client
           of A1111 pays at least);
- handler: ``handler({"input": job})`` for a job that compiles to exactly that body
           (validation, name resolution from the cached lists, compile, the POST, progress
           polling, packaging, delivery).

The server is the replay A1111 (tests/replay.py) answering every txt2img with a BENCHMARK
FIXTURE, not a recording: 4 random-noise 1024x1024 PNGs made here with Pillow (noise does
not compress, so each is as large as a PNG of that size gets), with the ``info`` of the
recorded ``txt2img_batch_size_2`` answer extended to 4 seeds. Only the sizes matter here.

    .venv/bin/python -m bench.overhead [--rounds 30]

Prints the medians and the ratio handler / direct (target <= 1.02).

Slow-generation mode (``--slow 10``): the replay server holds every txt2img 10 s (its
``delay``) and serves the recorded mid-generation ``/sdapi/v1/progress`` answers meanwhile, so
the handler's progress polling runs as on a real generation. RunPod's ``progress_update`` is
replaced by a counter (the seam the tests use), as if on the platform; ``--local`` keeps the
local test mode instead (no polling). Prints the progress polls and updates per handler job
and the ratio.

    .venv/bin/python -m bench.overhead --slow 10 [--rounds 3] [--local]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a1111 import progress  # noqa: E402
from tests.replay import ReplayServer  # noqa: E402

TXT2IMG = "/sdapi/v1/txt2img"
PROGRESS = "/sdapi/v1/progress"
IMAGES = 4
SIZE = 1024


def noise_png_b64(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def fixture_response(srv: ReplayServer) -> dict:
    recorded = srv.recording("txt2img_batch_size_2")["response"]["json"]
    info = json.loads(recorded["info"])
    seeds = [info["seed"] + i for i in range(IMAGES)]
    info.update(all_seeds=seeds, all_subseeds=seeds, batch_size=IMAGES, width=SIZE, height=SIZE,
                all_prompts=[info["prompt"]] * IMAGES, all_negative_prompts=[info["negative_prompt"]] * IMAGES,
                infotexts=[info["infotexts"][0]] * IMAGES)
    return {"images": [noise_png_b64(i) for i in range(IMAGES)], "parameters": recorded["parameters"],
            "info": json.dumps(info)}


JOB = {"id": "bench", "input": {
    "prompt": "a photo of a cat", "sampler_name": "Euler", "steps": 20, "width": SIZE, "height": SIZE,
    "batch_size": IMAGES, "seed": 42, "loras": [{"name": "detail_tweaker", "weight": 0.8}],
}}
# Slow mode: the recorded txt2img_minimal answer (one 64x64 image); only the wait matters.
SLOW_JOB = {"id": "bench-slow", "input": {
    "prompt": "a photo of a cat", "sampler_name": "Euler", "steps": 4, "width": 64, "height": 64, "seed": 42,
}}


@dataclass(frozen=True)
class Result:
    rounds: int
    response_mb: float
    direct_s: float        # medians
    handler_s: float

    def lines(self) -> list[str]:
        d, h = self.direct_s, self.handler_s
        return [f"response: {IMAGES} noise PNGs {SIZE}x{SIZE}, {self.response_mb:.1f} MB of JSON; "
                f"{self.rounds} rounds, medians",
                f"direct POST : {d * 1000:8.1f} ms",
                f"handler     : {h * 1000:8.1f} ms   (+{(h - d) * 1000:.1f} ms)",
                f"ratio handler/direct: {h / d:.3f}  (target <= 1.02)"]


def point_worker_at(url: str, tmp: Path) -> None:
    """The handler's environment: the replay server as A1111, empty models and state folders."""
    os.environ.update({
        "A1111_URL": url, "MODELS_DIR": str(tmp / "models"),
        "MODELS_CATALOG": str(tmp / "none.json"), "A1111_STATE_DIR": str(tmp / "state"),
        "WEBUI_BACKEND": "a1111", "A1111_READY_TIMEOUT": "10", "MAX_RESULT_MB": "100",
    })
    os.environ.pop("BUCKET_ENDPOINT_URL", None)


@dataclass
class Rounds:
    direct: list[float]
    handler: list[float]
    polls: list[int]       # progress requests during each handler job
    updates: list[int]     # progress updates sent during each handler job


def time_rounds(handler: Callable[[dict], dict], srv: ReplayServer, body: dict, rounds: int,
                job: dict = JOB, images: int = IMAGES, updates: list | None = None) -> Rounds:
    """Seconds of a direct POST of ``body`` and of the handler running ``job``, per round."""
    session = requests.Session()
    session.trust_env = False
    url = srv.url
    session.post(url + TXT2IMG, json=body).json()
    out = Rounds([], [], [], [])
    sent = updates if updates is not None else []

    def post_direct() -> None:
        t0 = time.perf_counter()
        resp = session.post(url + TXT2IMG, json=body, timeout=600)
        resp.raise_for_status()
        resp.json()
        out.direct.append(time.perf_counter() - t0)

    def through_handler() -> None:
        polls0, sent0 = len(srv.sent("GET", PROGRESS)), len(sent)
        t0 = time.perf_counter()
        result = handler(job)
        out.handler.append(time.perf_counter() - t0)
        out.polls.append(len(srv.sent("GET", PROGRESS)) - polls0)
        out.updates.append(len(sent) - sent0)
        assert "error" not in result and len(result["images"]) == images, result.get("error")

    for i in range(rounds):
        # Alternate which goes first, so neither always runs on a cache the other warmed.
        for step in ((post_direct, through_handler) if i % 2 else (through_handler, post_direct)):
            step()
    return out


def slow_lines(seconds: float, local: bool, r: Rounds) -> list[str]:
    d, h = statistics.median(r.direct), statistics.median(r.handler)
    mode = "local test mode (no polling)" if local else "as on the platform (progress_update counted)"
    return [f"slow generation: {seconds:g} s per txt2img, {len(r.handler)} rounds, medians; {mode}",
            f"direct POST : {d:8.3f} s",
            f"handler     : {h:8.3f} s   (+{(h - d) * 1000:.1f} ms)",
            f"progress polls per handler job: {r.polls} (max {max(r.polls)}); updates sent: {r.updates}",
            f"ratio handler/direct: {h / d:.4f}"]


def run_slow(seconds: float, rounds: int, local: bool) -> int:
    with ReplayServer("a1111") as srv, tempfile.TemporaryDirectory() as tmp:
        point_worker_at(srv.url, Path(tmp))
        from handler import handler

        first = handler(SLOW_JOB)  # warm-up at full speed: readiness, list caches, imports
        if "error" in first:
            print("handler failed:", first["error"])
            return 1
        body = srv.sent("POST", TXT2IMG)[-1]
        updates: list[tuple[dict, dict]] = []
        if not local:
            progress._default_send = lambda job, payload: updates.append((job, payload))
        srv.delay("POST", TXT2IMG, seconds)
        r = time_rounds(handler, srv, body, rounds, SLOW_JOB, 1, updates)
    print("\n".join(slow_lines(seconds, local, r)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="handler overhead vs a direct POST")
    parser.add_argument("--rounds", type=int, help="default 30 (3 with --slow)")
    parser.add_argument("--slow", type=float, metavar="SECONDS", help="slow-generation mode: seconds per txt2img")
    parser.add_argument("--local", action="store_true", help="with --slow: the local test mode (no polling)")
    args = parser.parse_args(argv)
    if args.slow:
        return run_slow(args.slow, args.rounds or 3, args.local)
    rounds = args.rounds or 30

    with ReplayServer("a1111") as srv, tempfile.TemporaryDirectory() as tmp:
        response = fixture_response(srv)
        # The fixture is served for every txt2img (a 200 "fault": the server's way to answer
        # with a body of our choosing).
        srv.fault("POST", TXT2IMG, "status", status=200, body=response)
        point_worker_at(srv.url, Path(tmp))
        from handler import handler

        first = handler(JOB)  # warm-up: readiness, list caches, imports
        if "error" in first:
            print("handler failed:", first["error"])
            return 1
        assert len(first["images"]) == IMAGES
        body = srv.sent("POST", TXT2IMG)[-1]
        r = time_rounds(handler, srv, body, rounds)
        assert all(b == body for b in srv.sent("POST", TXT2IMG)[-2:]), "handler and direct sent different bodies"
    direct, through = statistics.median(r.direct), statistics.median(r.handler)
    print("\n".join(Result(rounds, len(json.dumps(response)) / 1e6, direct, through).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
