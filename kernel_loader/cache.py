"""The cache layout, in one place: where kernels live and how their files are named and written.

The layout is huggingface_hub's (so its tools and the `kernels` client read it too)::

    <cache>/kernels--<org>--<name>/blobs/<sha256>                           file contents
    <cache>/kernels--<org>--<name>/snapshots/<commit>/build/<variant>/...   symlinks to blobs
    <cache>/kernels--<org>--<name>/refs/<revision>                          revision -> commit
    <cache>/.kernel-loader/<kind>/kernels--<org>--<name><suffix>           kernel_loader's own state

``<cache>`` is KERNELS_CACHE if set (as the `kernels` client does), else HF_HUB_CACHE. Every write is a temp file
in the same folder renamed over the target, so a reader sees the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

STATE_DIR = ".kernel-loader"


def cache_dir() -> str:
    """Where kernels live: KERNELS_CACHE if set (as the `kernels` client does), else the HF hub cache."""
    from huggingface_hub import constants

    return os.environ.get("KERNELS_CACHE") or constants.HF_HUB_CACHE


def _folder_name(repo_id: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="kernel")


def repo_cache_path(repo_id: str) -> Path:
    return Path(cache_dir()) / _folder_name(repo_id)


def snapshot_build(repo_id: str, commit: str) -> Path:
    """``snapshots/<commit>/build``: the folder holding a commit's cached variants."""
    return repo_cache_path(repo_id) / "snapshots" / commit / "build"


def variant_path(repo_id: str, commit: str, variant: str) -> Path:
    return snapshot_build(repo_id, commit) / variant


def blobs_dir(repo_id: str) -> Path:
    return repo_cache_path(repo_id) / "blobs"


def refs_dir(repo_id: str) -> Path:
    return repo_cache_path(repo_id) / "refs"


def read_ref(repo_id: str, revision: str) -> str | None:
    """The commit ``refs/<revision>`` names, None when it is not recorded."""
    ref = refs_dir(repo_id) / revision
    return ref.read_text().strip() if ref.is_file() else None


def write_ref(repo_id: str, revision: str, commit: str) -> None:
    """Record revision -> commit in ``refs/`` (atomically; no write when it already says so)."""
    if read_ref(repo_id, revision) == commit:
        return
    atomic_write(refs_dir(repo_id) / revision, commit.encode())


def state_path(kind: str, repo_id: str, suffix: str) -> Path:
    """kernel_loader's own per-repo state file (never inside huggingface_hub's repo folder)."""
    return Path(cache_dir()) / STATE_DIR / kind / (_folder_name(repo_id) + suffix)


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file that replaces ``path`` when the block ends without an error (and is removed otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` by renaming a fresh symlink over it."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.import-link"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def discard_variant(path: Path) -> None:
    """Remove a refused variant's snapshot entries and the blobs only they point to (a blob shared with another
    snapshot, e.g. an unchanged file in the next version, stays)."""
    if not path.exists():
        return
    targets = {p.resolve() for p in path.rglob("*") if p.is_symlink()}
    snapshots = path.parents[2] if path.parent.name == "build" else None  # <repo>/snapshots/<commit>/build/<v>
    shutil.rmtree(path, ignore_errors=True)
    if snapshots is not None and snapshots.name == "snapshots":
        for p in snapshots.rglob("*"):
            if p.is_symlink():
                targets.discard(p.resolve())
    for target in targets:
        if target.is_file() and target.parent.name == "blobs":
            target.unlink(missing_ok=True)
