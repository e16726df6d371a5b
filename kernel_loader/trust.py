"""Who may publish code that this process imports.

A repo is trusted when its org or its full id is in the allow-list (``trust=`` argument, else the comma list in
``KERNEL_LOADER_TRUST``; ``*`` trusts everyone), or, online, when the Hub marks its org as a trusted kernel
publisher (the flag the `kernels` client checks). Offline the flag cannot be asked: a download that passed the check
records how (``<cache>/.kernel-loader/trust/<repo>.json``, see :mod:`kernel_loader.cachestate`), and an offline load
accepts exactly the commits recorded there; a cached repo that was never trusted here (e.g. fetched by another tool)
is refused unless the allow-list names it.
"""

from __future__ import annotations

from .cachestate import trust_record
from .env import env_text
from .errors import KernelUnavailable
from .spec import KernelSpec


def allow_list(trust: str | list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    if trust is None:
        trust = env_text("KERNEL_LOADER_TRUST") or ""
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
        if trust_record(spec.repo_id):
            return "offline-cache"
        raise KernelUnavailable(
            f"offline and {spec.repo_id} was never trusted when it was downloaded to this cache; allow it with "
            f"KERNEL_LOADER_TRUST={spec.org} or trust=[{spec.repo_id!r}], or download it online after trusting it",
            stage="trust",
        )
    trusted, why = hub_trusts(spec.org)
    if trusted:
        return "hub"
    raise KernelUnavailable(
        f"publisher {spec.org!r} is not trusted ({why}); "
        f"allow it with KERNEL_LOADER_TRUST={spec.org} or trust=[{spec.repo_id!r}]",
        stage="trust",
    )


def hub_trusts(org: str) -> tuple[bool, str]:
    """(trusted?, what the Hub said) from ``/api/organizations/<org>/overview``'s ``trustedKernelPublisher`` flag,
    the check the `kernels` client makes; any other answer counts as not trusted."""
    from urllib.parse import quote

    from . import hubio

    url = f"{hubio.endpoint()}/api/organizations/{quote(org, safe='')}/overview"
    try:
        data, _ = hubio.get_json(url, max_bytes=1 << 20, what=f"overview of {org}")
    except hubio.HubStatus as e:
        return False, f"the Hub {hubio.endpoint()} answered HTTP {e.status} for its publisher overview"
    except (hubio.HubUnreachable, ValueError) as e:
        return False, f"the Hub {hubio.endpoint()} gave no usable publisher overview: {e}"
    if isinstance(data, dict) and data.get("trustedKernelPublisher") is True:
        return True, "trusted kernel publisher"
    return False, f"not a trusted kernel publisher on {hubio.endpoint()}"


def check_offline_commit(repo_id: str, commit: str) -> None:
    """After an offline resolution trusted via the cache record: the commit itself must be one that was trusted."""
    commits = trust_record(repo_id)
    if commit not in commits:
        have = ", ".join(c[:12] for c in sorted(commits)) or "none"
        raise KernelUnavailable(f"offline: commit {commit[:12]} of {repo_id} was never trusted when downloaded "
                                f"(trusted commits: {have})", stage="trust")
