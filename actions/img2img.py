"""img2img and inpainting: a job with ``init_images``, run as txt2img runs.

    output.preflight -> inputs.load (decode, fetch https, mask size) -> presets.expand ->
    ensure_ready -> per step: resolve names -> compile_img2img -> POST /sdapi/v1/img2img
    (with progress) -> results.package -> output.deliver

The images are decoded (and fetched) before A1111 is even asked whether it is ready, so a
bad image costs no generation and no wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from a1111.holding import HeldModels
from a1111.image_payload import IMG2IMG, compile_img2img
from a1111.payload import compile_warnings
from a1111.progress import ProgressReporter
from a1111.readiness import ensure_ready
from a1111.resolve import resolve
from a1111.results import combine, package
from a1111.state import state_for
from cache import ModelCache
from inputs.load import load_images
from output.delivery import deliver, preflight
from schemas.job import Job
from schemas.output import Packaged
from schemas.settings import Settings

log = logging.getLogger("worker")


def run_img2img(job: dict, parsed: Job, settings: Settings, started: float,
                check_cancelled: Callable[[], None]) -> dict:
    import presets  # imported here: presets pull in Pillow drawing code

    plan = preflight(parsed.output, job.get("s3Config"))
    deadline = started + settings.job_timeout_s
    images = load_images(parsed, settings, deadline=deadline)
    state = state_for(settings)
    catalog = state.catalog(settings.catalog_path)
    steps = presets.expand(parsed, catalog, settings)
    ensure_ready(settings, deadline=deadline)
    cache = ModelCache(settings, catalog, deadline=deadline)
    outputs: list[tuple[str | None, Packaged]] = []
    with HeldModels(settings, catalog, cache=cache) as held:
        for step in steps:
            t0 = time.monotonic()
            resolved = held.confirm(step.job, resolve(step.job, settings, catalog, cache=cache))
            payload = compile_img2img(step.job, resolved, settings.backend, images)
            t1 = time.monotonic()
            log.info("job %s: img2img%s %sx%s from %d image(s)%s, %s steps, checkpoint %s, %d LoRA(s)",
                     job.get("id"), f" [{step.label}]" if step.label else "", payload["width"], payload["height"],
                     len(images.init_images), " with a mask" if images.mask else "", payload["steps"],
                     resolved.checkpoint, len(resolved.loras))
            check_cancelled()
            with ProgressReporter(state.client, job, label=step.label):
                response = state.client.txt2img(payload, deadline=deadline, route=IMG2IMG)
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
