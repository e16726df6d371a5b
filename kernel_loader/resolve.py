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

from dataclasses import dataclass, field

from . import _kernels, hubrepo
from .cache import cache_dir, read_ref, refs_dir, snapshot_build, variant_path
from .cachestate import cached_listing, listing_ttl
from .containment import Limits
from .errors import KernelUnavailable
from .hub_client import HubServerError, HubUnreachable, hub_endpoint, hub_offline
from .integrity import check_metadata
from .spec import KernelSpec, branch_of_version, is_commit, version_branches, version_of_branch
from .system import SystemInfo
from .variants import parse_variants


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
    return branch_of_version(want), versions[want]


def pin_revision(spec: KernelSpec, *, ttl: float | None = None) -> tuple[str, str]:
    """(revision, commit) the Hub gives for ``spec``: the asked-for or newest ``vN`` branch, a tag or branch, or
    a commit as is. Listings are cached on disk for ``ttl`` seconds (default ``KERNEL_LOADER_LISTING_TTL``) so
    that N ranks starting together ask the Hub once; what comes back from the cache file is validated like a Hub
    answer."""
    ttl = listing_ttl() if ttl is None else ttl
    if spec.revision is None or spec.version is not None:
        def list_versions():
            found = version_branches(hubrepo.list_refs(spec).branches.items())
            return {str(n): c for n, c in found.items()}

        raw = cached_listing(spec.repo_id, "refs", list_versions, ttl=ttl) if ttl else list_versions()
        if not _valid_versions(raw):
            raw = list_versions()
        return _pick_version(spec, {int(k): v for k, v in raw.items()})
    if is_commit(spec.revision):
        return spec.revision, spec.revision
    revision = spec.revision

    def revision_commit():
        return hubrepo.revision_commit(spec, revision)

    commit = cached_listing(spec.repo_id, f"rev:{revision}", revision_commit, ttl=ttl) if ttl else revision_commit()
    if not is_commit(commit):
        commit = revision_commit()
    return revision, commit


def list_variants(spec: KernelSpec, revision: str, commit: str) -> list[str]:
    """The folder names under build/ at ``commit`` (a commit's tree never changes: the listing is cached for good).
    Whether each is a variant is decided by :func:`kernel_loader.variants.parse_variants`."""
    def listing():
        return hubrepo.list_variant_names(spec, revision, commit, Limits.from_env())

    names = cached_listing(spec.repo_id, f"variants@{commit}", listing)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        names = listing()
    return names


def other_versions_with_a_variant(spec: KernelSpec, system: SystemInfo) -> list[tuple[int, str]]:
    """(N, variant) for every other ``vN`` branch of the repo that has a variant for ``system``, newest first: what
    to suggest when the pinned version has none. Empty offline or when the Hub cannot be asked."""
    if hub_offline():
        return []
    try:
        found = version_branches(hubrepo.list_refs(spec).branches.items())
        out = []
        for n, commit in sorted(found.items(), reverse=True):
            if n == spec.version:
                continue
            variants, _invalid = parse_variants(list_variants(spec, branch_of_version(n), commit))
            res = _decide(spec, branch_of_version(n), commit, variants, offline=False)
            if res.variant is not None:
                out.append((n, res.variant))
        return out
    except (HubUnreachable, KernelUnavailable):
        return []


def _resolve_online(spec: KernelSpec, system: SystemInfo) -> Resolution:
    revision, commit = pin_revision(spec)
    variants, invalid = parse_variants(list_variants(spec, revision, commit))
    rejected = [VariantDecision(repr(n)[1:-1][:80], False, "not a valid variant folder name") for n in invalid]
    resolution = _decide(spec, revision, commit, variants, offline=False, rejected=rejected)
    return _check_archs(spec, resolution, system, online=True)


def _valid_versions(raw) -> bool:
    return isinstance(raw, dict) and all(
        isinstance(k, str) and version_of_branch(f"v{k}") is not None and is_commit(v) for k, v in raw.items())


def _cached_revisions(spec: KernelSpec) -> tuple[str, str] | None:
    if spec.revision is not None and is_commit(spec.revision):
        return spec.revision, spec.revision
    if spec.revision is not None and spec.version is None:
        commit = read_ref(spec.repo_id, spec.revision) or ""
        return (spec.revision, commit) if is_commit(commit) else None
    refs = refs_dir(spec.repo_id)
    versions = version_branches((p.name, p.read_text().strip()) for p in refs.iterdir()
                                if p.is_file() and version_of_branch(p.name)) if refs.is_dir() else {}
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
    build = snapshot_build(spec.repo_id, commit)
    # Only variants whose metadata.json was fully downloaded count as cached.
    variants = [v for v in get_variants_local(build) if (build / v.variant_str / "metadata.json").is_file()]
    resolution = _decide(spec, revision, commit, variants, offline=True)
    return _check_archs(spec, resolution, system, online=False)


def _decide(spec: KernelSpec, revision: str, commit: str, variants, *, offline: bool,
            rejected: list[VariantDecision] = ()) -> Resolution:
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
        ] + list(rejected),
        offline=offline,
    )


def _metadata_archs(spec: KernelSpec, res: Resolution, variant: str, online: bool) -> tuple[str, list[str] | None]:
    """(backend type, declared archs) from the variant's metadata.json: read from the cache offline, else from
    the Hub into memory only (its size checked from the listing first; nothing is written to the cache)."""
    where = f"{res.repo_id} variant {variant}"
    try:
        if online:
            _, meta, _ = hubrepo.read_metadata(spec, res.commit, variant, Limits.from_env(), stage="resolve")
        else:
            meta = check_metadata((variant_path(res.repo_id, res.commit, variant) / "metadata.json").read_bytes(),
                                  where=where)
        archs = meta.backend.archs
        return str(meta.backend.backend_type), None if archs is None else [str(a) for a in archs]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise KernelUnavailable(f"{where}: unreadable metadata.json ({e})", stage="resolve")


def _check_archs(spec: KernelSpec, res: Resolution, system: SystemInfo, *, online: bool) -> Resolution:
    """Reject accepted CUDA variants whose declared archs exclude this GPU; keep the first that fits."""
    if res.variant is None or system.gpu_capability is None:
        return res
    major, minor = (int(x) for x in system.gpu_capability.split("."))
    trace = list(res.trace)
    for i, d in enumerate(trace):
        if not d.accepted:
            continue
        backend, archs = _metadata_archs(spec, res, d.variant, online)
        if backend == "cuda" and archs and not _kernels.supports_cuda_capability(archs, (major, minor)):
            trace[i] = VariantDecision(
                d.variant, False, f"GPU capability {system.gpu_capability} not in the build's archs {','.join(archs)}")
            continue
        res.variant, res.trace = d.variant, trace
        return res
    res.variant, res.trace = None, trace
    return res
