"""Every image of one job, decoded (and fetched) before anything is sent to A1111.

All problems are collected and raised as one error naming each field and index
(``init_images[1]``, ``mask``, ``images[0]``); no message carries any of an image's data.
"""

from __future__ import annotations

from typing import Any

from inputs.decode import ImageRejected, InputImage, JobImages, base64_bytes, decode_image, is_url
from inputs.fetch import fetch_image
from schemas.errors import Problem, WorkerError, problems_error


def _sources(job: Any) -> list[tuple[str, str, bool]]:
    """(field, source, is_mask) for every image the job gives."""
    out = [(f"init_images[{i}]", s, False) for i, s in enumerate(job.init_images or [])]
    if job.mask is not None:
        out.append(("mask", job.mask, True))
    out += [(f"images[{i}]", s, False) for i, s in enumerate(job.images or [])]
    return out


def _one(fld: str, source: str, is_mask: bool, settings: Any, deadline: float | None) -> InputImage:
    if is_url(source):
        data = fetch_image(source, fld, settings, deadline=deadline)
    else:
        data = base64_bytes(source, settings.input_image_max_bytes)
    return decode_image(data, max_pixels=settings.input_image_max_pixels, mask=is_mask)


def mask_problem(init: InputImage, mask: InputImage, resize: bool) -> Problem | None:
    """A mask of another size than the init image, unless the job asks for resizing. PURE."""
    if resize or (init.width, init.height) == (mask.width, mask.height):
        return None
    return Problem("mask", f"mask is {mask.width}x{mask.height} but init_images[0] is {init.width}x{init.height}; "
                           "send a mask of the image's size, or set \"mask_resize\": true to let A1111 stretch it "
                           "to the image")


def load_images(job: Any, settings: Any, *, deadline: float | None = None) -> JobImages:
    """The job's images, checked; raises one error listing every problem."""
    sources = _sources(job)
    if len(sources) > settings.input_images_max:
        where = "images" if job.images else "init_images"
        raise problems_error([Problem(where, f"the job sends {len(sources)} images, more than "
                                             f"INPUT_IMAGES_MAX={settings.input_images_max}")])
    problems: list[Problem] = []
    done: dict[str, InputImage] = {}
    for fld, source, is_mask in sources:
        try:
            done[fld] = _one(fld, source, is_mask, settings, deadline)
        except ImageRejected as exc:
            problems.append(Problem(fld, f"{fld} {exc}"))
        except WorkerError as exc:
            problems.append(Problem(fld, exc.message, exc.error_type))
    init = [done[f] for f, _, m in sources if f.startswith("init_images") and f in done]
    mask = done.get("mask")
    if mask is not None and init and "init_images[0]" in done:
        problem = mask_problem(done["init_images[0]"], mask, job.mask_resize)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise problems_error(problems)
    return JobImages(init_images=init, mask=mask, images=[done[f] for f, _, _ in sources if f.startswith("images")],
                     fetched=sum(1 for _, s, _ in sources if is_url(s)))
