"""Pick the build variant of a kernel repo for this machine.

Variant parsing, compatibility rules and preference order are the `kernels` library's
(``kernels.variants.resolve_variants``: stable ABI > exact torchXY > noarch > universal, CUDA minor <= system);
we keep its full trace and add two things it leaves to load time: the revision is pinned to a commit before
anything is listed or downloaded (so the listing and the files come from one snapshot), and the GPU arch check
against ``metadata.json`` happens here, before any import, moving on to the next compatible variant if it fails.

Online, the Hub is asked; offline (HF_HUB_OFFLINE=1), or when the Hub cannot be reached, only the local cache is
read. Every failure raises :class:`KernelUnavailable` with a one-line reason.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .fallback import KernelUnavailable
from .hubrepo import HubServerError, HubUnreachable
from .spec import KernelSpec
from .system import SystemInfo

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class VariantDecision:
    variant: str
    accepted: bool
    reason: str | None = None  # why it was rejected (None when accepted)


@dataclass
class Resolution:
    repo_id: str
    revision: str  # what was asked for (branch such as v1, tag, or commit)
    commit: str  # the commit everything was read from
    variant: str | None  # the chosen variant, None when nothing fits
    trace: list[VariantDecision] = field(default_factory=list)
    offline: bool = False  # resolved from the local cache only

    def summary(self, limit: int = 6) -> str:
        """'have: a (reason); b (reason)' for one-line fallback messages."""
        rejected = [d for d in self.trace if not d.accepted]
        parts = [f"{d.variant} ({d.reason})" for d in rejected[:limit]]
        if len(rejected) > limit:
            parts.append(f"... {len(rejected) - limit} more")
        return "have: " + ("; ".join(parts) if parts else "no variants at all")


def cache_dir() -> str:
    """Where kernels live: KERNELS_CACHE if set (as the `kernels` client does), else the HF hub cache."""
    from huggingface_hub import constants

    return os.environ.get("KERNELS_CACHE") or constants.HF_HUB_CACHE


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def repo_cache_path(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type="kernel")


def resolve(spec: KernelSpec, system: SystemInfo, *, offline: bool | None = None) -> Resolution:
    """Resolve ``spec`` on ``system``; online unless offline mode is on or the Hub is unreachable."""
    if offline is None:
        offline = hub_offline()
    if offline:
        return _resolve_cached(spec, system, why="HF_HUB_OFFLINE is set")
    try:
        return _resolve_online(spec, system)
    except HubUnreachable as e:
        # A cluster node that lost the Hub still runs what it already has.
        try:
            return _resolve_cached(spec, system, why=f"Hub {hub_endpoint()} unreachable ({e})")
        except KernelUnavailable:
            if isinstance(e, HubServerError):  # the Hub answered: name its error, no offline advice
                raise KernelUnavailable(e.reason, stage="resolve") from None
            raise


def _pick_version(spec: KernelSpec, versions: dict[int, str]) -> tuple[str, str]:
    """(branch, commit) for the spec's version, or the newest version when none was asked for."""
    if not versions:
        raise KernelUnavailable(f"{spec.repo_id} has no version branches (v1, v2, ...)", stage="resolve")
    want = spec.version if spec.version is not None else max(versions)
    if want not in versions:
        have = ", ".join(f"v{v}" for v in sorted(versions))
        raise KernelUnavailable(f"{spec.repo_id} has no version v{want}; have: {have}", stage="resolve")
    return f"v{want}", versions[want]


def _resolve_online(spec: KernelSpec, system: SystemInfo) -> Resolution:
    from . import hubrepo
    from .cachestate import cached_listing, listing_ttl
    from .containment import Limits

    # Listings are cached on disk (refs for a short TTL, a commit's variants for good) so that N ranks starting
    # together ask the Hub once; what comes back from the cache file is validated like a Hub answer.
    if spec.revision is None or spec.version is not None:
        def list_versions():
            return version_branches(hubrepo.list_refs(spec))

        raw = cached_listing(spec.repo_id, "refs", list_versions, ttl=listing_ttl())
        if not _valid_versions(raw):
            raw = list_versions()
        revision, commit = _pick_version(spec, {int(k): v for k, v in raw.items()})
    elif _COMMIT_RE.match(spec.revision):
        revision = commit = spec.revision
    else:
        revision = spec.revision

        def revision_commit():
            return hubrepo.revision_commit(spec, revision)

        commit = cached_listing(spec.repo_id, f"rev:{revision}", revision_commit, ttl=listing_ttl())
        if not isinstance(commit, str) or not _COMMIT_RE.match(commit):
            commit = revision_commit()

    def list_variants():
        return hubrepo.list_variant_names(spec, revision, commit, Limits.from_env())

    names = cached_listing(spec.repo_id, f"variants@{commit}", list_variants)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        names = list_variants()
    variants, invalid = _parse_variants(names, where=f"{spec.repo_id}@{revision}")
    resolution = _decide(spec, revision, commit, variants, offline=False, invalid=invalid)
    return _check_archs(spec, resolution, system, api="hub")


def version_branches(refs) -> dict[str, str]:
    """{'1': commit, ...} of the vN branches of a :class:`kernel_loader.hubrepo.Refs`."""
    return {m.group(1): c for name, c in refs.branches.items() if (m := re.fullmatch(r"v([1-9][0-9]{0,5})", name))}


def _valid_versions(raw) -> bool:
    return isinstance(raw, dict) and all(
        isinstance(k, str) and re.fullmatch(r"[1-9][0-9]{0,5}", k) and isinstance(v, str) and _COMMIT_RE.match(v)
        for k, v in raw.items())


def _parse_variants(names: list[str], *, where: str) -> tuple[list, list[VariantDecision]]:
    """(variant objects, rejections) for listed folder names: a name that is not a variant (or not a safe folder
    name) is rejected with the reason, so a fallback can say why nothing fit."""
    from kernels.variants import parse_variant

    from .containment import check_variant_name

    out, invalid = [], []
    for n in names:
        try:
            check_variant_name(n, where=where)
            out.append(parse_variant(n))
        except Exception:
            invalid.append(VariantDecision(repr(n)[1:-1][:80], False, "not a valid variant folder name"))
    return out, invalid


def _cached_revisions(spec: KernelSpec) -> tuple[str, str] | None:
    refs = repo_cache_path(spec.repo_id) / "refs"
    if spec.revision is not None and _COMMIT_RE.match(spec.revision):
        return spec.revision, spec.revision
    if spec.revision is not None and spec.version is None:
        ref = refs / spec.revision
        commit = ref.read_text().strip() if ref.is_file() else ""
        return (spec.revision, commit) if _COMMIT_RE.match(commit) else None
    versions = {}
    if refs.is_dir():
        for p in refs.iterdir():
            m = re.fullmatch(r"v([1-9][0-9]*)", p.name)
            if m and p.is_file() and _COMMIT_RE.match(commit := p.read_text().strip()):
                versions[int(m.group(1))] = commit
    if not versions:
        return None
    return _pick_version(spec, versions)


def _resolve_cached(spec: KernelSpec, system: SystemInfo, *, why: str) -> Resolution:
    from kernels.variants import get_variants_local

    found = _cached_revisions(spec)
    if found is None:
        raise KernelUnavailable(
            f"{why} and {spec} is not in the cache {cache_dir()}; run `kernel-loader download {spec}` while online",
            stage="resolve",
        )
    revision, commit = found
    build = repo_cache_path(spec.repo_id) / "snapshots" / commit / "build"
    # Only variants whose metadata.json was fully downloaded count as cached.
    variants = [v for v in get_variants_local(build) if (build / v.variant_str / "metadata.json").is_file()]
    resolution = _decide(spec, revision, commit, variants, offline=True)
    return _check_archs(spec, resolution, system, api=None)


def _decide(spec: KernelSpec, revision: str, commit: str, variants, *, offline: bool,
            invalid: list[VariantDecision] = ()) -> Resolution:
    from kernels.variants import VariantAccepted, resolve_variants

    chosen, trace = resolve_variants(variants) if variants else ([], [])
    return Resolution(
        repo_id=spec.repo_id,
        revision=revision,
        commit=commit,
        variant=chosen[0].variant_str if chosen else None,
        trace=[
            VariantDecision(d.variant.variant_str, True)
            if isinstance(d, VariantAccepted)
            else VariantDecision(d.variant.variant_str, False, d.reason)
            for d in trace
        ] + list(invalid),
        offline=offline,
    )


def _metadata_archs(spec: KernelSpec, res: Resolution, variant: str, api) -> tuple[str, list[str] | None]:
    """(backend type, declared archs) from the variant's metadata.json: read from the cache offline, else from
    the Hub into memory only (its size checked from the listing first; nothing is written to the cache)."""
    from .containment import Limits
    from .hubrepo import read_metadata
    from .integrity import check_metadata

    where = f"{res.repo_id} variant {variant}"
    try:
        if api is None:
            path = repo_cache_path(res.repo_id) / "snapshots" / res.commit / "build" / variant / "metadata.json"
            meta = check_metadata(path.read_bytes(), where=where)
        else:
            _, meta, _ = read_metadata(spec, res.commit, variant, Limits.from_env(), stage="resolve")
        archs = meta.backend.archs
        return str(meta.backend.backend_type), None if archs is None else [str(a) for a in archs]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise KernelUnavailable(f"{where}: unreadable metadata.json ({e})", stage="resolve")


def _check_archs(spec: KernelSpec, res: Resolution, system: SystemInfo, *, api) -> Resolution:
    """Reject accepted CUDA variants whose declared archs exclude this GPU; keep the first that fits."""
    from kernels.archs import _supports_cuda_capability

    if res.variant is None or system.gpu_capability is None:
        return res
    major, minor = (int(x) for x in system.gpu_capability.split("."))
    trace = list(res.trace)
    for i, d in enumerate(trace):
        if not d.accepted:
            continue
        backend, archs = _metadata_archs(spec, res, d.variant, api)
        if backend == "cuda" and archs and not _supports_cuda_capability(archs, (major, minor)):
            trace[i] = VariantDecision(
                d.variant, False, f"GPU capability {system.gpu_capability} not in the build's archs {','.join(archs)}")
            continue
        res.variant, res.trace = d.variant, trace
        return res
    res.variant, res.trace = None, trace
    return res
