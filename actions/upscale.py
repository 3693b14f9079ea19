"""The upscale action: images through A1111's extras (no checkpoint, no sampling).

    output.preflight -> inputs.load -> ensure_ready -> upscaler names checked (catalog
    upscalers placed) -> POST /sdapi/v1/extra-single-image (one image) or
    /sdapi/v1/extra-batch-images (several) -> results.package_extras -> output.deliver
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from a1111.image_payload import extras_route_and_body, upscaled_size
from a1111.readiness import ensure_ready
from a1111.results import package_extras
from a1111.state import state_for
from a1111.upscalers import check_upscalers
from cache import ModelCache
from inputs.load import load_images
from output.delivery import deliver, preflight
from schemas.errors import JobTimeout
from schemas.job import Job
from schemas.settings import Settings

log = logging.getLogger("worker")


def run_upscale(job: dict, parsed: Job, settings: Settings, started: float,
                check_cancelled: Callable[[], None]) -> dict:
    plan = preflight(parsed.output, job.get("s3Config"))
    deadline = started + settings.job_timeout_s
    images = load_images(parsed, settings, deadline=deadline)
    state = state_for(settings)
    catalog = state.catalog(settings.catalog_path)
    ensure_ready(settings, deadline=deadline)
    t0 = time.monotonic()
    upscalers = check_upscalers(parsed, settings, catalog, ModelCache(settings, catalog, deadline=deadline))
    route, body = extras_route_and_body(parsed, upscalers, images)
    log.info("job %s: upscale of %d image(s) with %s", job.get("id"), len(images.images),
             " + ".join(upscalers.values()))
    check_cancelled()
    left = deadline - time.monotonic()
    if left <= 0:
        raise JobTimeout("the job reached its time limit before the upscale started")
    t1 = time.monotonic()
    response = state.client.post(route, body, timeout=left)
    t2 = time.monotonic()
    packaged = package_extras(response if isinstance(response, dict) else {}, body,
                              [upscaled_size(body, image) for image in images.images], upscalers,
                              timings={"resolve_s": round(t1 - t0, 3), "generate_s": round(t2 - t1, 3)})
    packaged.result["timings"]["total_s"] = round(time.monotonic() - started, 3)
    return deliver(packaged, plan, settings, str(job.get("id")))
