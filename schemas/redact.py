"""The one redaction pass: what the worker returns or logs never carries a credential.

A job can paste a secret anywhere (a ``?token=`` URL in any model field, a token as a field
name) and validation messages echo what they refuse, so every message is redacted where it
leaves the worker: ``schemas.errors`` (results) and log lines (``RedactingFilter``).

Redacted: URL user info; the values of credential-like query parameters and ``key=value`` /
``"key": "value"`` pairs (token, key, sig, auth, secret, password, session, credential,
X-Amz-*); ``Bearer`` values; and the values of the worker's secret environment variables,
wherever they appear (also percent-encoded).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

# The variables that hold the worker's own credentials.
SECRET_VARS = ("HF_TOKEN", "CIVITAI_TOKEN", "HUGGING_FACE_HUB_TOKEN", "BUCKET_SECRET_ACCESS_KEY",
               "BUCKET_ACCESS_KEY_ID")
# A shorter value would blank out ordinary words of every message.
MIN_SECRET_CHARS = 4
MASK = "***"

# Names of parameters that carry credentials (Civitai ?token=, signed CDN and S3 URLs).
_SECRET_NAME = re.compile(r"token|key|sig|auth|credential|secret|passw|session|^x-amz-", re.I)
# The look-behinds make each scan start only at the beginning of a run: without them a long
# run of letters would be rescanned from every position (quadratic time on hostile input).
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s'\"<>`]+")
_PAIR = re.compile(r"(?<![\w.-])([\w.-]+)=([^\s&'\"#<>;,]+)")
_QUOTED_PAIR = re.compile(r"""(["'])([\w.-]+)\1(\s*:\s*)(["'])([^"'\n]*)\4""")
# 8+ characters: "a flag bearer holding it" is a prompt, not a credential.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def secret_values() -> list[str]:
    """The set secret environment values, each also as it appears inside a URL."""
    out: list[str] = []
    for var in SECRET_VARS:
        value = os.environ.get(var, "")
        if len(value) >= MIN_SECRET_CHARS:
            out += [value, quote(value, safe=""), quote_plus(value)]
    # Longest first, so a value is never half-replaced by a shorter one it contains.
    return sorted(set(out), key=len, reverse=True)


def redact_secrets(text: str) -> str:
    """``text`` with the values of the secret environment variables replaced by ***."""
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def redact_url(url: str) -> str:
    """The URL without user info, fragment and credential-like query values.

    A URL with nothing to hide comes back unchanged, so names derived from it (cache/refs.py
    hashes the redacted URL, so that a rotated ?token= keeps the name) equal those of the URL.
    """
    url = redact_secrets(url)
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        has_user = parts.username is not None or parts.password is not None
    except ValueError:
        return "<unparseable URL>"
    if not has_user and not parts.fragment and not any(_SECRET_NAME.search(k) for k, _ in pairs):
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, MASK if _SECRET_NAME.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _pair(m: re.Match[str]) -> str:
    # Also turns redact_url's %2A%2A%2A (the mask, URL-encoded) into a readable *** in text.
    return f"{m.group(1)}={MASK}" if _SECRET_NAME.search(m.group(1)) else m.group(0)


def _quoted_pair(m: re.Match[str]) -> str:
    if not _SECRET_NAME.search(m.group(2)):
        return m.group(0)
    q, key, sep, vq = m.group(1), m.group(2), m.group(3), m.group(4)
    return f"{q}{key}{q}{sep}{vq}{MASK}{vq}"


def redact(text: str) -> str:
    """Free text (a message, a log line) with every credential in it replaced by ***."""
    text = redact_secrets(text)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    text = _PAIR.sub(_pair, text)
    text = _QUOTED_PAIR.sub(_quoted_pair, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def redact_data(value: Any, depth: int = 0, max_depth: int = 32) -> Any:
    """``value`` with every string in it (dict keys too) redacted; other values unchanged.

    Past ``max_depth`` levels a value is kept only as its redacted text: results are built by
    the worker and shallow, but nothing may recurse without bound."""
    if isinstance(value, str):
        return redact(value)
    if depth >= max_depth and isinstance(value, dict | list | tuple):
        return redact(repr(value)[:200])
    if isinstance(value, dict):
        return {redact_data(k, depth + 1, max_depth): redact_data(v, depth + 1, max_depth) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, depth + 1, max_depth) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message, arguments and traceback before any handler formats it.

    On a handler it covers every logger, the libraries' too (urllib3 logs request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the line
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put one RedactingFilter on ``logger`` (default: the root logger) and on its handlers."""
    logger = logger or logging.getLogger()
    for target in (logger, *logger.handlers):
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(RedactingFilter())
