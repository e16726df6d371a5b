"""kernel_loader's own small state inside the cache, and the process coordination built on it.

Everything lives under ``<cache>/.kernel-loader/`` (never inside huggingface_hub's ``<repo folder>``, so its cache
scanner is not confused), one file per repo, named like huggingface_hub's repo folders (see :mod:`.cache`):

- ``locks/<repo>.lock``: a ``filelock`` lock held around trust + resolve + fetch + verify of that repo, so N
  processes starting cold on one node download each file once and never see a half-written variant;
- ``listings/<repo>.json``: the refs listing (short TTL, ``KERNEL_LOADER_LISTING_TTL`` seconds, default 30) and the
  per-commit variant listing (a commit's tree never changes: kept), so ranks do not hammer the Hub;
- ``trust/<repo>.json``: how the repo was trusted when it was downloaded (allow-list or the Hub flag), so an
  offline load can tell a repo that passed the check from one that never did.

A read-only cache still works for offline reading: the lock is skipped when it cannot be created.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .cache import atomic_write, state_path
from .env import env_seconds
from .errors import KernelUnavailable
from .hub_client import hub_endpoint

DEFAULT_LISTING_TTL = 30.0
DEFAULT_LOCK_TIMEOUT = 900.0


@contextlib.contextmanager
def repo_lock(repo_id: str):
    """Hold the per-repo file lock (``KERNEL_LOADER_LOCK_TIMEOUT`` seconds at most, default 900).

    Yields True when the lock is held, False when the cache is read-only (nothing will be written then)."""
    from filelock import FileLock, Timeout

    path = state_path("locks", repo_id, ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=env_seconds("KERNEL_LOADER_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
        lock.acquire()
    except Timeout:
        raise KernelUnavailable(f"timed out waiting for the cache lock {path} (another process is fetching "
                                f"{repo_id}); raise KERNEL_LOADER_LOCK_TIMEOUT or remove a stale lock",
                                stage="fetch") from None
    except OSError:  # read-only or missing cache: no writer can be coordinated, readers need no lock
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------- listings


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_listing(repo_id: str, key: str, fetch, *, ttl: float | None = None):
    """``fetch()`` unless a value stored under ``key`` is younger than ``ttl`` (None: never expires).

    Values must be JSON. The file is advisory: anything unreadable is ignored and refetched; callers validate
    what they get as if it came from the Hub."""
    path = state_path("listings", repo_id, ".json")
    key = f"{hub_endpoint()} {key}"  # a listing from one Hub or mirror never answers for another
    data = _read_json(path)
    entry = data.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("at"), (int, float)):
        age = time.time() - entry["at"]
        if 0 <= age and (ttl is None or age < ttl):
            return entry.get("value")
    value = fetch()
    data = _read_json(path)  # re-read: another process may have added keys meanwhile
    data[key] = {"at": time.time(), "value": value}
    with contextlib.suppress(OSError):  # a read-only cache simply does not remember
        atomic_write(path, json.dumps(data, sort_keys=True).encode())
    return value


def listing_ttl() -> float:
    return env_seconds("KERNEL_LOADER_LISTING_TTL", DEFAULT_LISTING_TTL)


# ---------------------------------------------------------------------------------------------- trust


def record_trust(repo_id: str, commit: str, how: str) -> None:
    """Remember that ``repo_id`` at ``commit`` passed the trust check as ``how`` (allow-list, hub, bundle)."""
    path = state_path("trust", repo_id, ".json")
    data = _read_json(path)
    commits = data.get("commits") if isinstance(data.get("commits"), dict) else {}
    if isinstance(commits.get(commit), dict) and commits[commit].get("trusted_by") == how:
        return
    commits[commit] = {"trusted_by": how, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write(path, json.dumps({"repo_id": repo_id, "commits": commits}, indent=1, sort_keys=True).encode())


def trust_record(repo_id: str) -> dict[str, dict]:
    """commit -> {trusted_by, at} for a repo (empty when it was never trusted here)."""
    data = _read_json(state_path("trust", repo_id, ".json"))
    if data.get("repo_id") != repo_id or not isinstance(data.get("commits"), dict):
        return {}
    return {c: v for c, v in data["commits"].items() if isinstance(v, dict) and isinstance(c, str)}
