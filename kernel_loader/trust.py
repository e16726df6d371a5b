"""Who may publish code that this process imports.

A repo is trusted when its org or its full id is in the allow-list (``trust=`` argument, else the comma list in
``KERNEL_LOADER_TRUST``; ``*`` trusts everyone), or, online, when the Hub marks its org as a trusted kernel
publisher (the flag the `kernels` client checks). Offline the flag cannot be asked; as in `kernels`, a cached copy
was only written after the check passed online, so it is accepted.
"""

from __future__ import annotations

import os

from .fallback import KernelUnavailable
from .spec import KernelSpec


def allow_list(trust: str | list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    if trust is None:
        trust = os.environ.get("KERNEL_LOADER_TRUST", "")
    if isinstance(trust, str):
        trust = trust.split(",")
    entries = tuple(t.strip() for t in trust if t and t.strip())
    for entry in entries:
        if entry != "*" and (entry.count("/") > 1 or entry.startswith("/") or entry.endswith("/")):
            raise ValueError(f"trust entry {entry!r} must be an org ('kernels-community'), a repo ('org/name') or '*'")
    return entries


def check_trust(spec: KernelSpec, *, offline: bool, trust=None) -> str:
    """Return how the repo is trusted ('allow-list', 'hub', 'offline-cache'); raise KernelUnavailable if it is not."""
    entries = allow_list(trust)
    if "*" in entries or spec.repo_id in entries or spec.org in entries:
        return "allow-list"
    if offline:
        return "offline-cache"
    from .resolve import hub_api, hub_endpoint

    try:
        overview = hub_api().get_organization_overview(spec.org)
        trusted = bool(getattr(overview, "trustedKernelPublisher", False))
    except Exception:  # the Hub (or a mirror) cannot say: treat as not trusted
        trusted = False
    if trusted:
        return "hub"
    raise KernelUnavailable(
        f"publisher {spec.org!r} is not trusted (not a trusted kernel publisher on {hub_endpoint()}); "
        f"allow it with KERNEL_LOADER_TRUST={spec.org} or trust=[{spec.repo_id!r}]",
        stage="trust",
    )
