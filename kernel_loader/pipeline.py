"""The one path from a spec to verified files in the cache, used by every caller that gets kernel files:
:func:`kernel_loader.load`, ``kernel-loader download`` (through load), ``download --lock``, ``lock`` and
``bundle import``:

    trust check -> lock entry -> per-repo file lock -> resolve (or the locked variants) -> offline trusted-commit
    check -> fetch -> verify (against the lock's digests when there is one) -> trust record

So the rules hold for all of them alike: offline, a cached commit that was never trusted here is refused whoever
asks for it; a locked variant whose metadata.json differs from the lock is refused; a verified download records
how its commit was trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from . import hubrepo
from .cache import variant_path
from .cachestate import record_trust, repo_lock
from .containment import Limits
from .errors import KernelUnavailable
from .fetch import fetch
from .hub_client import HubServerError, HubUnreachable, hub_endpoint, hub_offline
from .lockfile import LockedKernel, read_lock
from .resolve import Resolution, list_variants, other_versions_with_a_variant, pin_revision, resolve
from .spec import KernelSpec
from .system import detect
from .trust import check_offline_commit, check_trust
from .variants import parse_variants


@dataclass(frozen=True)
class Acquired:
    """One verified variant folder (with ``metadata_only``: its metadata.json bytes, read into memory only, and
    the folder the variant would have in the cache)."""

    resolution: Resolution
    path: Path
    trusted_by: str  # allow-list | hub | offline-cache
    metadata: bytes | None = None  # metadata_only: metadata.json as the Hub served it (size-bounded, id-checked)

    @property
    def variant(self) -> str:
        return str(self.resolution.variant)


def lock_entry(spec: KernelSpec, lock: str | Path | None) -> LockedKernel | None:
    """The lock file's entry for ``spec`` (None without a lock). A lock file that cannot be read is a
    configuration error (ValueError); a spec the lock does not cover falls back like any unavailable kernel."""
    if lock is None:
        return None
    lockfile = read_lock(lock)
    try:
        return lockfile.entry(spec)
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="resolve") from None


def acquire(spec: KernelSpec, *, trust=None, lock: str | Path | None = None, entry: LockedKernel | None = None,
            variants: list[str] | None = None, offline: bool | None = None,
            metadata_only: bool = False) -> list[Acquired]:
    """Trusted, verified variant folders of ``spec`` in the cache.

    Without ``variants``: the one variant resolved for this machine; with it: exactly those (at the locked commit
    when there is an ``entry``; with ``metadata_only``, of those the repo has, all when ``variants`` is None).
    ``lock`` is a lock file path whose entry pins the spec; ``entry`` is that entry already read. ``offline``
    defaults to huggingface_hub's offline mode. ``metadata_only`` (for ``lock``) fetches each variant's
    metadata.json alone, always online."""
    offline = hub_offline() if offline is None else offline
    if entry is None:
        entry = lock_entry(spec, lock)
    if metadata_only and offline:
        raise KernelUnavailable("locking needs the Hub, and HF_HUB_OFFLINE is set", stage="resolve")
    how = check_trust(spec, offline=offline, trust=trust)
    # One process per repo at a time resolves + fetches + verifies: N ranks download each file once, and none
    # sees another's half-written variant. The others then find it verified in the cache (no Hub request).
    with repo_lock(spec.repo_id):
        if metadata_only:
            done = _metadata(spec, variants, how)
        else:
            done = [Acquired(res, _fetch_one(spec, res, how, entry), how)
                    for res in _resolutions(spec, offline, entry, variants)]
        for got in done:
            if not got.resolution.offline:
                try:
                    record_trust(spec.repo_id, got.resolution.commit, how)
                except OSError:  # read-only cache: nothing new was written there either
                    pass
    return done


def _resolutions(spec: KernelSpec, offline: bool, entry: LockedKernel | None,
                 variants: list[str] | None) -> list[Resolution]:
    if variants is not None:
        if entry is None:
            raise ValueError("acquire(variants=...) needs a lock entry: it names a commit and its variants")
        return [Resolution(entry.repo_id, entry.ref, entry.commit, name, [], offline=offline) for name in variants]
    system = detect()
    target = spec if entry is None else replace(spec, revision=entry.commit, version=None)
    res = resolve(target, system, offline=offline)
    if entry is not None:
        res.revision = entry.ref  # recorded as refs/vN -> commit, so the locked version also resolves offline
    if res.variant is None:
        hint = ""
        if spec.version is not None and entry is None:  # a pinned @vN: name the versions that do have a build
            others = other_versions_with_a_variant(spec, system)
            hint = "".join(f"; v{n} has {variant}" for n, variant in others)
            hint += f": use @v{others[0][0]}" if others else ""
        raise KernelUnavailable(f"no variant of {spec.repo_id}@{res.revision} for {system.variant}; "
                                f"{res.summary()}{hint}", stage="resolve")
    if entry is not None and entry.variants and res.variant not in entry.variants:
        raise KernelUnavailable(f"variant {res.variant} of {spec.repo_id} is not in the lock file (locked: "
                                f"{', '.join(sorted(entry.variants))}); re-run `kernel-loader lock`", stage="resolve")
    return [res]


def _fetch_one(spec: KernelSpec, res: Resolution, how: str, entry: LockedKernel | None) -> Path:
    if how == "offline-cache":
        check_offline_commit(spec.repo_id, res.commit)
    locked = entry.variants.get(str(res.variant)) if entry is not None else None
    return fetch(spec, res, locked=locked)


def _metadata(spec: KernelSpec, variants: list[str] | None, how: str) -> list[Acquired]:
    try:
        revision, commit = pin_revision(spec, ttl=0)  # a lock pins what the Hub says now, not a cached listing
        found, _ = parse_variants(list_variants(spec, revision, commit))
        have = sorted(v.variant_str for v in found)
        chosen = have if not variants else [v for v in have if v in variants]
        if not chosen:
            raise ValueError(f"{spec.repo_id}@{revision} has none of the variants {variants}; have: "
                             f"{', '.join(have) or 'none'}")
        limits = Limits.from_env()
        out = []
        for name in chosen:
            raw, _, _ = hubrepo.read_metadata(spec, commit, name, limits, stage="resolve")
            out.append(Acquired(Resolution(spec.repo_id, revision, commit, name, [], offline=False),
                                variant_path(spec.repo_id, commit, name), how, metadata=raw))
        return out
    except HubServerError as e:
        raise KernelUnavailable(e.reason, stage="resolve") from None
    except HubUnreachable as e:
        raise KernelUnavailable(f"locking {spec.repo_id} needs the Hub {hub_endpoint()}, which is unreachable "
                                f"({e})", stage="resolve") from None
