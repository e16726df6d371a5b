"""The Hub as a client sees it: endpoint, offline switch, one ``HfApi``, and one request wrapper that turns the
Hub's errors into one-line reasons.

A request that cannot reach the Hub (connection refused, DNS, timeouts, 5xx, 429) raises :class:`HubUnreachable`,
which callers answer from the cache; a missing repo or revision, or a local cache write failure, is a
:class:`KernelUnavailable`.
"""

from __future__ import annotations

from ._version import __version__
from .cache import cache_dir
from .errors import KernelUnavailable
from .spec import KernelSpec

LIBRARY_NAME = "kernel-loader"


class HubUnreachable(Exception):
    """The Hub could not be reached (the message says how); the cache may still answer."""


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_api():
    from huggingface_hub import HfApi

    return HfApi(library_name=LIBRARY_NAME, library_version=__version__)


def hub_call(spec: KernelSpec, fn, *args, **kwargs):
    """Run one Hub request, turning the Hub's errors into one-line reasons."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn(*args, **kwargs)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403, 404):  # mirrors answer a bare 404 for both a missing repo and a missing revision
            raise KernelUnavailable(not_found_reason(spec), stage="resolve")
        if status is None or status >= 500 or status == 429:
            raise HubUnreachable(f"HTTP {status}")
        raise KernelUnavailable(f"Hub request for {spec.repo_id} failed: {str(e).splitlines()[0]}", stage="resolve")
    except OSError as e:
        import socket

        # A local filesystem error (disk full, file too large, read-only or unwritable cache) is not the Hub's:
        # name it, or the user is sent looking for a network problem.
        if e.errno is not None and not isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise KernelUnavailable(f"{spec.repo_id}: cache write failed in {cache_dir()}: "
                                    f"{e.strerror or e}{where}", stage="fetch")
        # connection refused, DNS, timeouts, or a size mismatch after a cut transfer
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise HubUnreachable(f"{type(e).__name__}: {first}" if first else type(e).__name__)
    except Exception as e:
        if type(e).__module__.split(".")[0].rstrip("0123456789") in ("httpx", "httpcore", "requests", "urllib3"):
            raise HubUnreachable(type(e).__name__)
        raise


def not_found_reason(spec: KernelSpec) -> str:
    """Tell a missing repo from a missing revision by asking for the repo's refs."""
    try:
        refs = hub_api().list_repo_refs(spec.repo_id, repo_type="kernel")
    except Exception:
        return f"repo {spec.repo_id} not found on {hub_endpoint()} (or not accessible with this token)"
    names = sorted(b.name for b in refs.branches) + sorted(t.name for t in refs.tags)
    return f"revision {spec.revision!r} not found in {spec.repo_id}; have: {', '.join(names) or 'no refs'}"


def metadata_file(spec: KernelSpec, api, commit: str, variant: str) -> str:
    """Download ``build/<variant>/metadata.json`` of ``commit`` alone (it is tiny) into the cache; its path."""
    return hub_call(spec, api.hf_hub_download, spec.repo_id, f"build/{variant}/metadata.json", repo_type="kernel",
                    revision=commit, cache_dir=cache_dir())
