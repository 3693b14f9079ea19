"""The worker's error hierarchy, its one problem type, and the one place that turns an
error into a job result.

Every expected failure is raised as a ``WorkerError`` subclass deep in the code and
converted here, so that messages, ``error_type`` values and ``refresh_worker`` follow
one rule: the job gets ``{"error": "<error_type>: <one sentence>", "error_type": ...,
"details"?: [...]}`` and never a traceback. Code that collects several problems (job fields, names, preset
values, prefetch failures) gathers ``Problem`` values and raises ``problems_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.redact import RedactingFilter, redact, redact_data

log = logging.getLogger(__name__)
# Its one line is a traceback, whose messages may quote the job's input.
log.addFilter(RedactingFilter())


class WorkerError(Exception):
    """Base of every failure the worker reports to the caller as a clear error."""

    error_type = "internal"
    # True only when the worker itself is broken (A1111 died, CUDA state poisoned):
    # RunPod then recycles it. Never for bad input: every refresh is a cold start.
    refresh_worker = False

    def __init_subclass__(cls, error_type: str | None = None, **kw: Any) -> None:
        # ``class X(WorkerError, error_type="x")``: each error names its type where it is declared.
        super().__init_subclass__(**kw)
        if error_type is not None:
            cls.error_type = error_type

    def __init__(self, message: str, *, details: list[Any] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.extra = extra

    def to_result(self) -> dict[str, Any]:
        """The job result; every string in it is redacted (messages echo the job's input)."""
        result: dict[str, Any] = {"error": error_text(self.error_type, self.message),
                                  "error_type": self.error_type}
        if self.details:
            result["details"] = self.details
        result.update(self.extra)
        if self.refresh_worker:
            result["refresh_worker"] = True
        return redact_data(result)


# Bad input or missing models: the caller can fix these, the worker stays as it is.
class ValidationFailed(WorkerError, error_type="validation"):
    """The job input is wrong; ``details`` lists every problem at once."""


class ModelNotFound(WorkerError, error_type="model_not_found"):
    """A model the job names is not in the catalog, on the volume, or listed by A1111."""


class DownloadFailed(WorkerError, error_type="download_failed"):
    """A model could not be downloaded or verified; nothing partial is left behind."""


class CatalogError(WorkerError, error_type="catalog"):
    """models.json is unreadable or inconsistent: the operator's file, not the caller's input."""


# A1111 itself.
class A1111Unavailable(WorkerError, error_type="a1111_unavailable"):
    """A1111 is not (or no longer) answering."""


class A1111ProcessDied(A1111Unavailable):
    """The A1111 process exited: only a fresh worker brings it back."""

    refresh_worker = True


class A1111Error(WorkerError, error_type="a1111_error"):
    """A1111 answered with an error that is not one of the other cases."""


class A1111Stuck(A1111Error):
    """A1111 answers, but every request fails the same way until the process is restarted."""

    refresh_worker = True


class OutOfMemory(WorkerError, error_type="out_of_memory"):
    """CUDA ran out of memory; the CUDA state may be poisoned, so the worker is recycled."""

    refresh_worker = True


class JobTimeout(WorkerError, error_type="timeout"):
    """The job ran past its deadline or was cancelled; A1111 was interrupted."""


# Delivering the result.
class ResultTooLarge(WorkerError, error_type="result_too_large"):
    """The result is over RunPod's size limit and cannot be uploaded."""


class UploadFailed(WorkerError, error_type="upload_failed"):
    """Uploading the images to the bucket failed."""


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job, found while looking for all of them.

    ``error_type`` decides which error a set of problems becomes (see ``problems_error``);
    ``hints`` are extra keys of the problem's entry in ``details`` (``suggestions``,
    ``allowed``, a prefetch failure's ``kind``/``ref``...).
    """

    field: str
    message: str
    error_type: str = ValidationFailed.error_type
    hints: Mapping[str, Any] = field(default_factory=dict)

    def detail(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, **self.hints}

    def __getitem__(self, key: str) -> Any:
        # A problem reads like its entry in ``details``: p["field"], p["suggestions"].
        return self.detail()[key]


# The RunPod SDK's local modes print and return only the ``error`` string, and a client often
# logs only that: so it names the type and every problem, within a bound a log line can carry.
MAX_ERROR_CHARS = 1000


def error_text(error_type: str, message: str) -> str:
    """The ``error`` string of a result: "<error_type>: <message>", at most MAX_ERROR_CHARS long."""
    text = f"{error_type}: {message}"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


# Room left in MAX_ERROR_CHARS for the "<error_type>: " in front of the message.
_TYPE_ROOM = 24


def join_problems(problems: Sequence[Problem], *, lead: str = "", limit: int = MAX_ERROR_CHARS - _TYPE_ROOM) -> str:
    """Every problem's message in one sentence ("a; b; c"), cut at a problem boundary to fit
    ``limit`` characters and then ending "(and N more)"; the first one is always shown."""
    text = lead
    for i, p in enumerate(problems):
        rest = len(problems) - i - 1
        tail = f" (and {rest} more)" if rest else ""
        piece = ("; " if i else "") + p.message
        if i and len(text) + len(piece) + len(tail) > limit:
            return f"{text} (and {len(problems) - i} more)"
        text += piece
    return text


def problems_error(problems: Sequence[Problem], *, lead: str = "", message: str | None = None,
                   **extra: Any) -> WorkerError:
    """The one error for a non-empty list of problems: ``lead`` and every problem's message
    (see ``join_problems``), or ``message``, where one sentence says it better.

    Its class follows the problems: ModelNotFound when every one is a missing model,
    ValidationFailed when any is bad input (the caller must fix that first), else
    DownloadFailed (missing models mixed with failed downloads, or other failures).
    """
    types = {p.error_type for p in problems}
    cls: type[WorkerError]
    if types == {ModelNotFound.error_type}:
        cls = ModelNotFound
    elif ValidationFailed.error_type in types:
        cls = ValidationFailed
    else:
        cls = DownloadFailed
    return cls(message or join_problems(problems, lead=lead), details=[p.detail() for p in problems], **extra)


def error_result(exc: BaseException) -> dict[str, Any]:
    """Map any exception to a job result; unexpected ones are logged, not leaked."""
    if isinstance(exc, WorkerError):
        return exc.to_result()
    # A bug, not bad input: log the traceback for the operator, give the caller one
    # sentence. The worker itself is still healthy, so no refresh.
    log.exception("unexpected error while running a job")
    return {
        "error": error_text("internal", redact(f"a bug in the worker: {type(exc).__name__}: {exc}"[:2000])[:500]),
        "error_type": "internal",
    }
