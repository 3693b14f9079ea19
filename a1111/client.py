"""HTTP client for A1111 / Forge: timeouts, safe retries, and error bodies mapped to our errors.

Error bodies differ between the two servers (a1111-api.md section 6, recordings):
- A1111 422 from FastAPI: ``{"detail": [{"loc", "msg", "type"}]}`` (pydantic v1);
  Forge 422: ``{"detail": [{"type", "loc", "msg", "input", ...}]}`` (pydantic v2).
- A1111 500 (and its HTTPExceptions): ``{"error", "detail", "body", "errors": str}``;
  Forge 500: ``{"error", "detail", "body", "message": str}``; Forge HTTPException: ``{"detail"}``.
- CUDA out of memory: ``error == "OutOfMemoryError"`` or "CUDA out of memory" in the text.

Retries cover only connection failures that happened before the server could have accepted
the request (refused, connect timeout). A txt2img that may already be running is never
sent twice: A1111 would generate twice, one after the other, under its queue lock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from schemas.errors import A1111Error, A1111Stuck, A1111Unavailable, JobTimeout, OutOfMemory, WorkerError

log = logging.getLogger(__name__)

TXT2IMG = "/sdapi/v1/txt2img"
RETRY_ATTEMPTS = 3
RETRY_MAX_S = 5.0
# After an interrupt A1111 stops at the next sampling step; give the cancelled request this
# long to come back so the connection (and A1111's queue lock) is released cleanly.
_INTERRUPT_TIMEOUT = (1.0, 5.0)


def _not_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (safe to send again)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, NewConnectionError | ConnectTimeoutError | ConnectionRefusedError):
            return True
        nxt = getattr(cur, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None
        cur = nxt or cur.__cause__ or cur.__context__
    return False


def _text(body: Any) -> str:
    # One line: server tracebacks and pydantic dumps carry newlines and indentation.
    return " ".join((body if isinstance(body, str) else str(body)).split())


def _validation_items(detail: list[Any]) -> list[dict[str, str]]:
    items = []
    for d in detail:
        if not isinstance(d, dict):
            items.append({"field": "body", "message": _text(d)})
            continue
        loc = [str(p) for p in d.get("loc", []) if p != "body"]
        items.append({"field": ".".join(loc) or "body", "message": _text(d.get("msg", ""))})
    return items


def is_out_of_memory(error: str, text: str) -> bool:
    return error == "OutOfMemoryError" or "out of memory" in text.lower()


def map_error(method: str, path: str, status: int, body: Any) -> WorkerError:
    """Turn a non-2xx answer into our error (PURE; see the module doc for the shapes)."""
    where = f"{method} {path}"
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI request validation, pydantic v1 (A1111) or v2 (Forge)
            items = _validation_items(detail)
            first = items[0] if items else {"field": "body", "message": "invalid"}
            return A1111Error(
                f"A1111 rejected the request to {path} (HTTP {status}): {first['field']}: {first['message']}",
                details=items, status=status,
            )
        if "error" in body:  # A1111's api_middleware / Forge's app-level handler
            error = _text(body.get("error") or "")
            text = _text(body.get("errors") or body.get("message") or body.get("detail") or "")
            if is_out_of_memory(error, text):
                return OutOfMemory(f"A1111 ran out of GPU memory ({error}: {text[:300]}); "
                                   "try a smaller size or batch, the worker will be restarted",
                                   status=status)
            msg = f"{error}: {text}" if text else error
            if error == "AttributeError" and "sd_checkpoint_info" in text:
                # Forge after a failed (re)load: sd_model stays None and every later request fails
                # the same way (recordings forge/stuck_*); only a fresh process is sure to recover.
                return A1111Stuck(f"A1111 failed on {where} (HTTP {status}): {msg[:300]}; the backend is stuck "
                                  "after a failed model load, so the worker will be restarted", status=status)
            return A1111Error(f"A1111 failed on {where} (HTTP {status}): {msg[:500]}", status=status)
        if isinstance(detail, str):  # plain FastAPI HTTPException (Forge) or routing 404/405
            if status == 404 and detail == "Not Found":
                return A1111Error(f"A1111 has no route {where} (HTTP 404); the extension or feature "
                                  "it belongs to is not installed", status=status)
            return A1111Error(f"A1111 failed on {where} (HTTP {status}): {detail[:500]}", status=status)
    if status in {502, 503, 504}:
        return A1111Unavailable(f"A1111 is not available ({where} answered HTTP {status})")
    return A1111Error(f"A1111 failed on {where} (HTTP {status}): {_text(body)[:300]}", status=status)


class A1111Client:
    """One worker's connection to A1111. Thread-safe enough for the progress poller: the
    session's pool hands each thread its own connection."""

    def __init__(self, base_url: str, *, connect_timeout: float = 3.05, read_timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never through a proxy from the env
        self._interrupts = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    # -- plumbing --------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
              timeout: tuple[float, float], retry_any_connection_error: bool) -> requests.Response:
        url = self.base_url + path

        def once() -> requests.Response:
            if method == "GET":
                return self.session.get(url, params=params, timeout=timeout)
            return self.session.post(url, json=json_body, timeout=timeout)

        def retryable(exc: BaseException) -> bool:
            if retry_any_connection_error:  # a body cut off mid-answer is a connection failure too
                return isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError) \
                    and not isinstance(exc, requests.ReadTimeout)
            return _not_sent(exc)

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_MAX_S),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        )
        return retrying(once)

    def _decode(self, method: str, path: str, resp: requests.Response) -> Any:
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text[:500]
            if resp.ok:
                raise A1111Error(f"A1111 answered {method} {path} with something that is not JSON "
                                 f"(HTTP {resp.status_code}, {resp.headers.get('content-type', '?')})") from None
        if not resp.ok:
            raise map_error(method, path, resp.status_code, body)
        return body

    def request(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
                timeout: float | None = None) -> Any:
        read = self.read_timeout if timeout is None else timeout
        try:
            resp = self._send(method, path, json_body=body, params=params,
                              timeout=(self.connect_timeout, read),
                              retry_any_connection_error=(method == "GET"))
        except requests.Timeout as exc:
            if isinstance(exc, requests.ConnectTimeout):
                raise A1111Unavailable(f"A1111 at {self.base_url} does not accept connections "
                                       f"({method} {path}: connect timeout)") from None
            raise A1111Unavailable(f"A1111 did not answer {method} {path} within {read:g} s") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise A1111Unavailable(f"A1111 at {self.base_url} is not answering ({method} {path}: "
                                   f"{type(exc).__name__})") from None
        return self._decode(method, path, resp)

    # -- the interface ------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def txt2img(self, payload: dict, *, deadline: float | None = None, route: str = TXT2IMG) -> dict:
        """POST the payload once. ``deadline`` is a ``time.monotonic()`` value; past it, A1111
        is interrupted and JobTimeout raised. A generation interrupted meanwhile (by the
        deadline or by ``interrupt()`` from another thread, e.g. a cancel) is never returned
        as a success, although A1111 answers it with 200 and partial images. ``route``: the
        generation route (img2img takes the same path through here)."""
        read = self.read_timeout * 10 if deadline is None else deadline - time.monotonic()
        if read <= 0:
            raise JobTimeout("the job reached its time limit before generation started")
        with self._lock:
            interrupts_before = self._interrupts
        started = time.monotonic()
        try:
            resp = self._send("POST", route, json_body=payload, timeout=(self.connect_timeout, read),
                              retry_any_connection_error=False)
        except requests.ReadTimeout:
            waited = time.monotonic() - started
            log.warning("txt2img still running after %.1f s: interrupting A1111", waited)
            self.interrupt()
            raise JobTimeout(f"the generation did not finish within the job's time limit ({waited:.0f} s); "
                             "A1111 was interrupted") from None
        except requests.ConnectTimeout:
            raise A1111Unavailable(f"A1111 at {self.base_url} does not accept connections (txt2img)") from None
        except requests.ConnectionError as exc:
            if _not_sent(exc):
                raise A1111Unavailable(f"A1111 at {self.base_url} is not answering (txt2img not sent)") from None
            raise A1111Unavailable("A1111 closed the connection during txt2img (did the process die?)") from None
        except requests.exceptions.ChunkedEncodingError:  # the answer broke off after its headers
            raise A1111Unavailable("A1111 closed the connection while sending the txt2img answer "
                                   "(did the process die?)") from None
        body = self._decode("POST", route, resp)
        with self._lock:
            interrupted = self._interrupts != interrupts_before
        if interrupted:
            raise JobTimeout("the generation was interrupted (job cancelled or past its time limit); "
                             "its partial images are not returned")
        if not isinstance(body, dict) or not isinstance(body.get("images"), list):
            raise A1111Error("A1111 answered txt2img without an 'images' list")
        return body

    def interrupt(self) -> None:
        """Ask A1111 to stop the running generation; never raises (it is called on the way out)."""
        with self._lock:
            self._interrupts += 1
        try:
            self.session.post(self.base_url + "/sdapi/v1/interrupt", timeout=_INTERRUPT_TIMEOUT)
        except requests.RequestException as exc:
            log.warning("POST /sdapi/v1/interrupt failed: %s", type(exc).__name__)

    def progress(self) -> dict:
        return self.request("GET", "/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout=5.0)

    def refresh(self, kind: str) -> None:
        """POST /sdapi/v1/refresh-<checkpoints|loras|embeddings|vae>, so A1111 rescans a folder."""
        self.post(f"/sdapi/v1/refresh-{kind}")
