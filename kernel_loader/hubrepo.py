"""What kernel_loader asks a Hub about one kernel repo, each answer checked before it is used.

Refs, the commit of a revision, the variant folders under ``build/``, a variant's file listing, its metadata.json,
and the download of a variant into the cache. Requests go through :mod:`kernel_loader.hubio` (byte caps, files
streamed into paths we build); names, sizes and ids through :mod:`kernel_loader.containment`. Errors become one
line that names the real cause:

- a 404 for a listing of something that exists one level up: what is missing ("v1 has no build/ folder");
- a 500 (or 501, 505..): "the Hub answered HTTP 500 for ... (a server error, not a connectivity problem)",
  never offline advice;
- no answer (connection, timeout, 502-504 from a gateway): :class:`~kernel_loader.hub_client.HubUnreachable`,
  which resolution turns into a cache lookup;
- an answer we refuse (a name that leaves its folder, a size over a limit, bytes not matching the listed id):
  the refusal itself, naming the value.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import hubio
from .containment import (Limits, ListedFile, check_inside, check_metadata_size, check_variant_name, listed_file,
                          plan_variant)
from .cache import atomic_symlink, atomic_write, cache_dir
from .errors import KernelUnavailable
from .hub_client import HubServerError, HubUnreachable
from .integrity import check_commit, check_metadata

MAX_JSON_BYTES = 4 << 20  # refs, revision and overview answers (a real one is a few KiB)


@dataclass
class Refs:
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit
    tags: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """'branches: main, v1; tags: v1 (v1 is both a branch and a tag; @v1 uses the branch)'"""
        parts = [f"branches: {', '.join(sorted(self.branches)) or 'none'}"]
        if self.tags:
            parts.append(f"tags: {', '.join(sorted(self.tags))}")
        both = sorted(set(self.branches) & set(self.tags))
        text = "; ".join(parts)
        if both:
            text += (f" ({', '.join(both)} {'is' if len(both) == 1 else 'are'} both a branch and a tag; "
                     f"@{both[0]} uses the branch)")
        return text


@contextlib.contextmanager
def answers(spec, what: str, *, not_found=None, stage: str = "resolve"):
    """Turn hubio's errors for request ``what`` into the reasons above. ``not_found`` (a string, or a callable
    giving one) is the reason for a 404, or a 401/403 (mirrors such as olah answer 401 for a missing revision)."""
    try:
        yield
    except hubio.HubStatus as e:
        if e.status in (401, 403, 404) and not_found is not None:
            raise KernelUnavailable(not_found() if callable(not_found) else not_found, stage=stage) from None
        if e.status in (401, 403, 404):
            raise KernelUnavailable(f"{what}: the Hub {hubio.endpoint()} answered HTTP {e.status} (no such repo or "
                                    "revision, or not accessible with this token)", stage=stage) from None
        if e.status >= 500:
            raise HubServerError(f"{what}: the Hub {hubio.endpoint()} answered HTTP {e.status} (a server error, not "
                                 "a connectivity problem)") from None
        raise KernelUnavailable(f"{what}: the Hub answered HTTP {e.status}", stage=stage) from None
    except hubio.HubUnreachable as e:
        raise HubUnreachable(str(e)) from None
    except ValueError as e:
        raise KernelUnavailable(str(e), stage=stage) from None


def list_refs(spec) -> Refs:
    what = f"refs of {spec.repo_id}"
    with answers(spec, what, not_found=f"repo {spec.repo_id} not found on {hubio.endpoint()}"):
        data, _ = hubio.get_json(hubio.api_url(spec.repo_id, "refs"), max_bytes=MAX_JSON_BYTES, what=what)
    refs = Refs()
    if not isinstance(data, dict):
        raise KernelUnavailable(f"{what}: the Hub's answer is not a refs object", stage="resolve")
    for group, out in (("branches", refs.branches), ("tags", refs.tags)):
        for item in data.get(group) or []:
            name = item.get("name") if isinstance(item, dict) else None
            commit = item.get("targetCommit") if isinstance(item, dict) else None
            if isinstance(name, str) and 0 < len(name) <= 255 and isinstance(commit, str):
                try:
                    out[name] = check_commit(commit, what=f"{what}: {group[:-2] if group == 'branches' else 'tag'} "
                                                          f"{name!r:.60}")
                except ValueError:
                    continue  # a ref we cannot pin is no candidate (as olah skips refs to trees)
    return refs


def revision_commit(spec, revision: str) -> str:
    from urllib.parse import quote

    what = f"revision {revision!r} of {spec.repo_id}"
    with answers(spec, what, not_found=lambda: not_found_reason(spec, revision)):
        data, _ = hubio.get_json(hubio.api_url(spec.repo_id, "revision", quote(revision, safe="")),
                                 max_bytes=MAX_JSON_BYTES, what=what)
    sha = data.get("sha") if isinstance(data, dict) else None
    try:
        return check_commit(sha, what=f"{what}: the commit the Hub names")
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="resolve") from None


def not_found_reason(spec, revision: str | None) -> str:
    try:
        refs = list_refs(spec)
    except (KernelUnavailable, HubUnreachable):
        return f"repo {spec.repo_id} not found on {hubio.endpoint()} (or not accessible with this token)"
    return f"revision {revision!r} not found in {spec.repo_id}; {refs.describe()}"


def list_variant_names(spec, revision: str, commit: str, limits: Limits) -> list[str]:
    """Names of the folders under build/ at ``commit`` (validated as single path components only: whether each is
    a variant is decided by the caller, so an invalid one can be named in the trace)."""
    what = f"{spec.repo_id}@{revision} build/"
    missing = (f"{spec.repo_id} {revision} (commit {commit[:12]}) has no build/ folder; a kernel repo holds "
               "build/<variant>/ folders")
    if revision == commit:
        missing = f"{spec.repo_id} has no build/ folder at commit {commit[:12]} (or no such commit)"
    with answers(spec, what, not_found=missing):
        raw = hubio.list_folder(spec.repo_id, commit, "build", recursive=False, max_entries=limits.files,
                                max_bytes=limits.listing_bytes, what=what)
    names = []
    for item in raw:
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str) or not path.startswith("build/") or "/" in path[6:] or not path[6:]:
            raise KernelUnavailable(f"{what}: listing entry path {path!r:.120} is not a folder name inside build/; "
                                    "the listing is refused", stage="resolve")
        if item.get("type") == "directory":
            names.append(path[6:])
    return sorted(set(names))


def list_variant_files(spec, commit: str, variant: str, limits: Limits, *, recursive: bool = True,
                       stage: str = "fetch") -> dict[str, ListedFile]:
    where = f"{spec.repo_id}@{commit[:12]} build/{variant}"
    try:
        check_commit(commit, what=where)
        check_variant_name(variant, where=where)
    except ValueError as e:
        raise KernelUnavailable(str(e), stage=stage) from None
    folder = f"build/{variant}"
    with answers(spec, where, not_found=f"{where}: no such folder at that commit", stage=stage):
        raw = hubio.list_folder(spec.repo_id, commit, folder, recursive=recursive, max_entries=limits.files + 1,
                                max_bytes=limits.listing_bytes, what=where)
        listing: dict[str, ListedFile] = {}
        for item in raw:
            f = listed_file(item, folder=folder, where=where)
            if f is None:
                continue
            if f.path in listing:
                raise ValueError(f"{where}: the Hub lists {f.path!r} twice")
            listing[f.path] = f
    return listing


def read_metadata(spec, commit: str, variant: str, limits: Limits, listing: dict[str, ListedFile] | None = None,
                  *, stage: str = "fetch"):
    """(raw bytes, parsed Metadata, listing) of a variant's metadata.json, read into memory only; its size comes
    from the listing and is checked before download."""
    if listing is None:
        listing = list_variant_files(spec, commit, variant, limits, recursive=False, stage=stage)
    where = f"{spec.repo_id}@{commit[:12]} build/{variant}"
    with answers(spec, f"{where}/metadata.json", stage=stage):
        entry = check_metadata_size(listing.get("metadata.json"), limits, where=where)
        raw = hubio.fetch_bytes(hubio.file_url(spec.repo_id, commit, f"build/{variant}/metadata.json"),
                                size=entry.size, blob_id=entry.blob_id, lfs=entry.lfs, what=where)
        meta = check_metadata(raw, where=where)
    return raw, meta, listing


def download_variant(spec, repo_folder: Path, commit: str, variant: str) -> Path:
    """Download build/<variant>/ at ``commit`` into ``repo_folder`` (huggingface_hub's layout: blobs/<blob id>,
    snapshots/<commit>/build/<variant>/<path> as relative links) and return the variant folder.

    Order, so a lying Hub costs at most one listing and one metadata.json: list the variant (entries validated,
    count bounded), fetch metadata.json (size from the listing, at most 1 MiB), check that the listing holds
    exactly the files its digest names and that every size is within :class:`Limits`, then download each file
    (bounded by its listed size, checked against its listed blob id), link them, and link metadata.json last, so
    the variant is visible only once complete."""
    limits = Limits.from_env()
    listing = list_variant_files(spec, commit, variant, limits)
    raw, meta, _ = read_metadata(spec, commit, variant, limits, listing)
    where = f"{spec.repo_id}@{commit[:12]} build/{variant}"
    if meta.digest is None:
        raise KernelUnavailable(f"{where}: metadata.json has no digest, so its files cannot be verified",
                                stage="verify")
    try:
        files = plan_variant(listing, dict(meta.digest.files), limits, where=where)
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="fetch") from None
    blobs = repo_folder / "blobs"
    vdir = repo_folder / "snapshots" / commit / "build" / variant
    with _cache_writes(spec):
        for d in (blobs, vdir):
            d.mkdir(parents=True, exist_ok=True)
            _inside(d, repo_folder, where)
        for f in files:
            blob = blobs / f.blob_id
            if not (blob.is_file() and blob.stat().st_size == f.size):
                with answers(spec, f"{where}/{f.path}", stage="fetch"):
                    hubio.download(hubio.file_url(spec.repo_id, commit, f"build/{variant}/{f.path}"), blob,
                                   size=f.size, blob_id=f.blob_id, lfs=f.lfs, what=where)
            _link(vdir / f.path, blob, repo_folder, where)
        meta_entry = listing["metadata.json"]
        meta_blob = blobs / meta_entry.blob_id
        atomic_write(meta_blob, raw)
        _link(vdir / "metadata.json", meta_blob, repo_folder, where)
    return vdir


@contextlib.contextmanager
def _cache_writes(spec):
    """A local file-system error is named as one (disk full, read-only cache), not as a Hub problem."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise KernelUnavailable(f"{spec.repo_id}: cache write failed in {cache_dir()}: {e.strerror or e}{where}",
                                stage="fetch") from None


def _inside(path: Path, root: Path, where: str) -> None:
    try:
        check_inside(path, root, what=where)
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="fetch") from None


def _link(link: Path, blob: Path, repo_folder: Path, where: str) -> None:
    """Point ``link`` at ``blob`` with a relative symlink (huggingface_hub's layout), replaced atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    _inside(link.parent, repo_folder, where)
    atomic_symlink(link, os.path.relpath(blob, link.parent))
