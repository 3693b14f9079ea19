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

from tests.replay import ReplayServer  # noqa: E402

TXT2IMG = "/sdapi/v1/txt2img"
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


def time_rounds(handler: Callable[[dict], dict], url: str, body: dict, rounds: int) -> tuple[float, float]:
    """Median seconds of (a direct POST of ``body``, the handler running JOB)."""
    session = requests.Session()
    session.trust_env = False
    session.post(url + TXT2IMG, json=body).json()
    direct: list[float] = []
    through: list[float] = []

    def post_direct() -> None:
        t0 = time.perf_counter()
        resp = session.post(url + TXT2IMG, json=body, timeout=60)
        resp.raise_for_status()
        resp.json()
        direct.append(time.perf_counter() - t0)

    def through_handler() -> None:
        t0 = time.perf_counter()
        out = handler(JOB)
        through.append(time.perf_counter() - t0)
        assert "error" not in out and len(out["images"]) == IMAGES

    for i in range(rounds):
        # Alternate which goes first, so neither always runs on a cache the other warmed.
        for step in ((post_direct, through_handler) if i % 2 else (through_handler, post_direct)):
            step()
    return statistics.median(direct), statistics.median(through)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="handler overhead vs a direct POST")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)

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
        direct, through = time_rounds(handler, srv.url, body, args.rounds)
        assert all(b == body for b in srv.sent("POST", TXT2IMG)[-2:]), "handler and direct sent different bodies"
    print("\n".join(Result(args.rounds, len(json.dumps(response)) / 1e6, direct, through).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
