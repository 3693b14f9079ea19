"""The worker's error hierarchy and the one place that turns an error into a job result.

Every expected failure is raised as a ``WorkerError`` subclass deep in the code and
converted here, so that messages, ``error_type`` values and ``refresh_worker`` follow
one rule: the job gets ``{"error": <one sentence>, "error_type": ..., "details"?: [...]}``
and never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class WorkerError(Exception):
    """Base of every failure the worker reports to the caller as a clear error."""

    error_type = "internal"
    # True only when the worker itself is broken (A1111 died, CUDA state poisoned):
    # RunPod then recycles it. Never for bad input: every refresh is a cold start.
    refresh_worker = False

    def __init__(self, message: str, *, details: list[Any] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.extra = extra

    def to_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {"error": self.message, "error_type": self.error_type}
        if self.details:
            result["details"] = self.details
        result.update(self.extra)
        if self.refresh_worker:
            result["refresh_worker"] = True
        return result


class ValidationFailed(WorkerError):
    """The job input is wrong; ``details`` lists every problem at once."""

    error_type = "validation"


class ModelNotFound(WorkerError):
    """A model the job names is not in the catalog, on the volume, or listed by A1111."""

    error_type = "model_not_found"


class DownloadFailed(WorkerError):
    """A model could not be downloaded or verified; nothing partial is left behind."""

    error_type = "download_failed"


class A1111Unavailable(WorkerError):
    """A1111 is not (or no longer) answering."""

    error_type = "a1111_unavailable"

    def __init__(self, message: str, *, process_died: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.refresh_worker = process_died


class OutOfMemory(WorkerError):
    """CUDA ran out of memory; the CUDA state may be poisoned, so the worker is recycled."""

    error_type = "out_of_memory"
    refresh_worker = True


class JobTimeout(WorkerError):
    """The job ran past its deadline or was cancelled; A1111 was interrupted."""

    error_type = "timeout"


class A1111Error(WorkerError):
    """A1111 answered with an error that is not one of the cases above."""

    error_type = "a1111_error"


class ResultTooLarge(WorkerError):
    """The result is over RunPod's size limit and cannot be uploaded."""

    error_type = "result_too_large"


class UploadFailed(WorkerError):
    """Uploading the images to the bucket failed."""

    error_type = "upload_failed"


def error_result(exc: BaseException) -> dict[str, Any]:
    """Map any exception to a job result; unexpected ones are logged, not leaked."""
    if isinstance(exc, WorkerError):
        return exc.to_result()
    # A bug, not bad input: log the traceback for the operator, give the caller one
    # sentence. The worker itself is still healthy, so no refresh.
    log.exception("unexpected error while running a job")
    return {
        "error": f"internal error: {type(exc).__name__}: {exc}"[:500],
        "error_type": "internal",
    }
