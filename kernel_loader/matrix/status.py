"""What exists where: variants in the matrix, in local build folders and on a Hub repo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .model import KernelInfo, MatrixEntry


@dataclass
class VariantStatus:
    kernel: str
    variant: str
    in_matrix: bool
    local_bytes: int | None = None
    hub_bytes: int | None = None
    archs: tuple[str, ...] = ()
    backend: str = ""
    version: int | None = None


def _meta_summary(meta: dict) -> tuple[str, tuple[str, ...], int | None]:
    backend = meta.get("backend") or {}
    return backend.get("type", ""), tuple(backend.get("archs") or ()), meta.get("version")


def local_variants(kernel_dir: Path) -> dict[str, tuple[int, dict]]:
    """variant -> (folder size, metadata.json) for ``kernel_dir/build/<variant>/``."""
    out = {}
    builds = Path(kernel_dir) / "build"
    if not builds.is_dir():
        return out
    for d in sorted(builds.iterdir()):
        meta = d / "metadata.json"
        if d.is_dir() and meta.is_file():
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            try:
                out[d.name] = (size, json.loads(meta.read_text()))
            except ValueError:
                out[d.name] = (size, {})
    return out


def hub_variants(repo_id: str, revision: str, *, endpoint: str | None = None) -> dict[str, tuple[int, dict]]:
    """variant -> (size of its files, metadata.json) on branch ``revision`` of a Hub kernel repo."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint)
    try:
        entries = list(api.list_repo_tree(repo_id, path_in_repo="build", recursive=True, revision=revision,
                                          repo_type="kernel"))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return {}
    sizes: dict[str, int] = {}
    for e in entries:
        parts = e.path.split("/")
        if len(parts) >= 3 and hasattr(e, "size"):
            sizes[parts[1]] = sizes.get(parts[1], 0) + int(e.size or 0)
    out = {}
    metas = {e.path.split("/")[1]: e for e in entries
             if e.path.count("/") == 2 and e.path.endswith("/metadata.json") and hasattr(e, "blob_id")}
    for variant, size in sorted(sizes.items()):
        out[variant] = (size, _hub_metadata(api, repo_id, revision, metas.get(variant)))
    return out


def _hub_metadata(api, repo_id: str, revision: str, entry) -> dict:
    """A variant's metadata.json read into memory only: its size (from the listing) bounded, its bytes checked
    against the listed blob id; no file is written (huggingface_hub would name the cache file by the ETag)."""
    from urllib.parse import quote

    from .. import hubio
    from ..containment import check_hex_id
    from ..integrity import MAX_METADATA_BYTES

    if entry is None or not isinstance(entry.size, int) or entry.size > MAX_METADATA_BYTES:
        return {}
    lfs = entry.lfs is not None
    try:
        blob = check_hex_id(entry.lfs["sha256"] if lfs else entry.blob_id, what=f"{repo_id} {entry.path}")
        url = f"{api.endpoint}/kernels/{repo_id}/resolve/{quote(revision, safe='')}/{quote(entry.path)}"
        return json.loads(hubio.fetch_bytes(url, size=entry.size, blob_id=blob, lfs=lfs, what=f"{repo_id}@{revision}"))
    except (ValueError, hubio.HubStatus, hubio.HubUnreachable):
        return {}


def status(entries: list[MatrixEntry], kernels: list[KernelInfo], *,
           hub: dict[str, tuple[str, str]] | None = None, endpoint: str | None = None) -> list[VariantStatus]:
    """One row per variant that is in the matrix, built locally, or on the Hub (``hub``: kernel -> (repo, rev))."""
    rows: list[VariantStatus] = []
    for k in kernels:
        wanted = [e.variant for e in entries if e.kernel == k.name]
        local = local_variants(k.dir)
        remote = hub_variants(*hub[k.name], endpoint=endpoint) if hub and k.name in hub else {}
        names = wanted + sorted((set(local) | set(remote)) - set(wanted))
        for v in names:
            row = VariantStatus(kernel=k.name, variant=v, in_matrix=v in wanted)
            for source, attr in ((local, "local_bytes"), (remote, "hub_bytes")):
                if v in source:
                    size, meta = source[v]
                    setattr(row, attr, size)
                    backend, archs, version = _meta_summary(meta)
                    row.backend, row.archs, row.version = backend or row.backend, archs or row.archs, version
            rows.append(row)
    return rows


def format_status(rows: list[VariantStatus], hub: bool) -> str:
    def size(n):
        return "-" if n is None else f"{n / 1e6:.2f} MB"

    header = ["kernel", "variant", "matrix", "local", *(["hub"] if hub else []), "version", "archs"]
    table = [header]
    for r in rows:
        table.append([r.kernel, r.variant, "yes" if r.in_matrix else "no", size(r.local_bytes),
                      *([size(r.hub_bytes)] if hub else []), "-" if r.version is None else str(r.version),
                      ",".join(r.archs) or ("-" if r.backend != "cpu" else "any")])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    built = sum(r.local_bytes is not None for r in rows)
    lines.append(f"{len(rows)} variants, {sum(r.in_matrix for r in rows)} in the matrix, {built} built locally"
                 + (f", {sum(r.hub_bytes is not None for r in rows)} on the Hub" if hub else ""))
    return "\n".join(lines)
