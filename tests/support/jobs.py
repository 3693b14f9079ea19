"""Jobs through the real entry point: running them, building their inputs from recordings,
and telling the txt2img requests they caused from readiness's own."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

import handler
from a1111.readiness import WARMUP_PAYLOAD
from a1111.results import image_facts
from output.delivery import deliver, preflight
from schemas.output import OutputOptions, Packaged
from schemas.settings import Settings
from tests.replay import RECORDINGS, ReplayServer

TXT2IMG = "/sdapi/v1/txt2img"


@dataclass(frozen=True)
class JobRunner:
    """``run(input) -> result`` through ``handler.handler``, in the envelope RunPod sends.

    ``base`` is merged under every input (the fields a module's jobs share); ``default`` is
    the input of ``run()`` called without one. Keywords of a call go into the envelope beside
    ``input`` (``s3Config``); ``fields`` takes the input itself as keywords instead.
    """

    job_id: str = "t"
    base: Mapping[str, Any] = field(default_factory=dict)
    default: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, inp: Mapping[str, Any] | None = None, job_id: str | None = None, **envelope: Any) -> dict:
        job_input = {**self.base, **(self.default if inp is None else inp)}
        return handler.handler({"id": job_id or self.job_id, "input": job_input, **envelope})

    def fields(self, **inp: Any) -> dict:
        return self(inp)


def txt2img_bodies(srv: ReplayServer) -> list[dict]:
    """The txt2img bodies the jobs sent, without readiness's own warm-up generation (sent
    once per server, before the first job), so a test counts only what its jobs caused."""
    return [b for b in srv.sent("POST", TXT2IMG) if b.get("prompt") != WARMUP_PAYLOAD["prompt"]]


def recorded_result(name: str) -> dict:
    """The result a1111/results.py packages from the recorded txt2img ``name`` (images, seeds
    from info.all_seeds, parameters = the body sent), read afresh so a test may change it."""
    rec = json.loads((RECORDINGS / "a1111" / f"{name}.json").read_text())
    body = rec["response"]["json"]
    info = json.loads(body["info"])
    return {"images": list(body["images"]), "seeds": list(info["all_seeds"]), "info": info,
            "parameters": dict(rec["request"]["json"]), "warnings": []}


def packaged(result: dict) -> Packaged:
    """A recorded ``result`` with the facts results.package records for one generation."""
    return Packaged(result, image_facts(result.get("parameters") or {}, result.get("seeds") or [],
                                        len(result["images"])))


def deliver_result(result: dict, options: OutputOptions | None, settings: Settings, job_id: str,
                   s3_config: dict | None) -> dict:
    """deliver() as actions/generate.run_generation calls it: the plan from preflight, facts from packaging."""
    return deliver(packaged(result), preflight(options, s3_config), settings, job_id)


def png_b64(rgb: tuple[int, int, int] = (0, 0, 0), size: tuple[int, int] = (64, 64)) -> str:
    """A one-colour PNG, base64-encoded as a job carries an image (a ControlNet input)."""
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def job_like(srv: ReplayServer, name: str, **fields: Any) -> dict:
    """A job asking for what the recorded request ``name`` asked (the recorded generations
    ran A1111's API default sampler, Euler), plus ``fields``; the replay answers with it."""
    srv.respond("POST", TXT2IMG, name)
    req = srv.recording(name)["request"]["json"]
    job = {k: req[k] for k in ("prompt", "width", "height", "steps", "seed", "batch_size") if k in req}
    # The worker adds the LoRA tags itself, from the job's loras.
    job["prompt"] = re.sub(r"\s*<lora:[^>]+>", "", job["prompt"])
    job["sampler_name"] = req.get("sampler_name", "Euler")
    job.update(fields)
    return job
