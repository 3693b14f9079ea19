"""txt2img and img2img (a job with ``init_images``; inpainting when it has a ``mask``): one flow.

    output.preflight -> [inputs.load: decode, fetch https, mask size] -> presets.expand ->
    ensure_ready -> per step: resolve names -> compile (txt2img or img2img payload) ->
    POST (with progress) -> results.package -> presets.finish -> results.combine -> output.deliver

The input images are decoded (and fetched) before A1111 is even asked whether it is ready,
so a bad image costs no generation and no wait; a job that cannot be delivered fails before
it generates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from a1111.client import TXT2IMG
from a1111.holding import HeldModels
from a1111.image_payload import IMG2IMG, compile_img2img
from a1111.payload import compile_txt2img, compile_warnings
from a1111.progress import ProgressReporter
from a1111.readiness import ensure_ready
from a1111.resolve import resolve
from a1111.resolved import Resolved
from a1111.results import combine, package
from a1111.state import state_for
from cache import ModelCache
from inputs.decode import JobImages
from inputs.load import load_images
from output.delivery import deliver, preflight
from schemas.job import Job
from schemas.output import Packaged
from schemas.settings import Settings

log = logging.getLogger("worker")


def run_generation(job: dict, parsed: Job, settings: Settings, started: float,
                   check_cancelled: Callable[[], None]) -> dict:
    import presets  # imported here: presets pull in Pillow drawing code

    plan = preflight(parsed.output, job.get("s3Config"))
    deadline = started + settings.job_timeout_s
    images = load_images(parsed, settings, deadline=deadline) if parsed.init_images is not None else None
    state = state_for(settings)
    catalog = state.catalog(settings.catalog_path)
    steps = presets.expand(parsed, catalog, settings)
    ensure_ready(settings, deadline=deadline)
    cache = ModelCache(settings, catalog, deadline=deadline)  # downloads end with the job
    outputs: list[tuple[str | None, Packaged]] = []
    # Every worker's eviction spares the job's model files until it ends (or its marker expires).
    with HeldModels(settings, catalog, cache=cache) as held:
        for step in steps:
            t0 = time.monotonic()
            # Held, then checked to be on the volume: one that vanished is placed again, or the job fails.
            resolved = held.confirm(step.job, resolve(step.job, settings, catalog, cache=cache))
            route, payload = _compile(step.job, resolved, settings.backend, images)
            t1 = time.monotonic()
            _log_step(job.get("id"), step.label, payload, resolved, images)
            check_cancelled()  # cancelled while models were resolved or downloaded: do not generate
            with ProgressReporter(state.client, job, label=step.label):
                response = state.client.txt2img(payload, deadline=deadline, route=route)
            t2 = time.monotonic()
            outputs.append((step.label, package(
                response, payload, resolved,
                return_control_maps=step.job.return_control_maps,
                timings={"resolve_s": round(t1 - t0, 3), "generate_s": round(t2 - t1, 3)},
                warnings=compile_warnings(step.job, resolved, settings.backend),
            )))
    packaged = combine(outputs, presets.finish(parsed, [out.result for _, out in outputs]))
    packaged.result["timings"]["total_s"] = round(time.monotonic() - started, 3)
    return deliver(packaged, plan, settings, str(job.get("id")))


def _compile(job: Job, resolved: Resolved, backend: str, images: JobImages | None) -> tuple[str, dict[str, Any]]:
    if images is None:
        return TXT2IMG, compile_txt2img(job, resolved, backend)
    return IMG2IMG, compile_img2img(job, resolved, backend, images)


def _log_step(job_id: Any, label: str | None, payload: dict[str, Any], resolved: Resolved,
              images: JobImages | None) -> None:
    what = "txt2img" if images is None else "img2img"
    source = "" if images is None else (f" from {len(images.init_images)} image(s)"
                                        + (" with a mask" if images.mask else ""))
    log.info("job %s: %s%s %sx%s%s, %s steps, checkpoint %s, %d LoRA(s)", job_id, what,
             f" [{label}]" if label else "", payload["width"], payload["height"], source,
             payload["steps"], resolved.checkpoint, len(resolved.loras))
