"""Which token, if any, a download URL may carry.

A job's sender may not be the operator (an app can relay its users' URLs), so a token goes
only to the host it was issued for: exactly that domain or a subdomain of it, over https on
the default port (``evilcivitai.com`` and ``civitai.com.evil.net`` get nothing), or exactly
the configured API origin (CIVITAI_BASE_URL / HF_ENDPOINT: scheme, host and port). Pure
apart from reading the environment.
"""

from __future__ import annotations

import os

from cache.pinned import origin

# token variable -> (the domain it was issued for, the variable that overrides the API origin,
# that origin's default)
TRUSTED = {
    "CIVITAI_TOKEN": ("civitai.com", "CIVITAI_BASE_URL", "https://civitai.com"),
    "HF_TOKEN": ("huggingface.co", "HF_ENDPOINT", "https://huggingface.co"),
}


def in_domain(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def trusted_for(url: str, token_var: str) -> bool:
    """Whether ``url`` may receive ``token_var``'s token."""
    domain, base_var, base_default = TRUSTED[token_var]
    here = origin(url)
    if here == origin(os.environ.get(base_var) or base_default):
        return True
    scheme, host, port = here
    return scheme == "https" and port == 443 and in_domain(host, domain)


def token_var_for(url: str) -> str | None:
    """The variable whose token ``url`` may carry, or None."""
    return next((var for var in TRUSTED if trusted_for(url, var)), None)


def auth_headers(url: str) -> tuple[dict[str, str], str | None]:
    """The Authorization header for ``url`` (empty when untrusted or unset) and the variable
    that would hold its token (named in 401/403 hints even when it is unset)."""
    var = token_var_for(url)
    token = os.environ.get(var) if var else None
    return ({"Authorization": f"Bearer {token}"} if token else {}), var
