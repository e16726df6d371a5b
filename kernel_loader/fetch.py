"""Download one variant into the standard Hub cache and verify every file before anything is imported.

Downloads go through ``huggingface_hub.snapshot_download`` (its ``.incomplete`` files + rename mean a cut
download never looks complete), restricted to ``build/<variant>/*`` so other variants are never fetched.

Verification uses the digest format of the `kernels` library (``metadata.json: digest{algorithm, files}``,
base64 sha256 per file, computed by ``kernels._rust.Digest``): a file whose hash differs, a listed file that is
missing and a file that is not listed are all refused. A refused variant's files are removed from the cache so the
next attempt downloads them again instead of failing on the same bad bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .fallback import KernelUnavailable
from .resolve import Resolution, _hub_call, _HubUnreachable, cache_dir, repo_cache_path
from .spec import KernelSpec

_NO_BYTECODE = ["*.pyc", "**/__pycache__/**"]


def variant_dir(res: Resolution) -> Path:
    return repo_cache_path(res.repo_id) / "snapshots" / res.commit / "build" / str(res.variant)


def fetch(spec: KernelSpec, res: Resolution) -> Path:
    """Return the verified local folder of ``res.variant`` (downloading it unless resolved offline)."""
    from huggingface_hub import snapshot_download

    if res.variant is None:
        raise ValueError("fetch() needs a resolution with a variant")
    if not res.offline:
        try:
            _hub_call(spec, snapshot_download, res.repo_id, repo_type="kernel", revision=res.commit,
                      allow_patterns=[f"build/{res.variant}/*"], ignore_patterns=_NO_BYTECODE,
                      cache_dir=cache_dir())
        except _HubUnreachable as e:
            raise KernelUnavailable(f"download of {res.repo_id} variant {res.variant} failed: Hub unreachable ({e})",
                                    stage="fetch")
        except OSError as e:  # disk full, read-only cache
            raise KernelUnavailable(f"download of {res.repo_id} variant {res.variant} failed: {e}", stage="fetch")
    path = variant_dir(res)
    if not (path / "metadata.json").is_file():
        raise KernelUnavailable(f"{res.repo_id} variant {res.variant} is not in the cache {cache_dir()}",
                                stage="fetch")
    try:
        verify_variant(path)
    except KernelUnavailable:
        discard_variant(path)
        raise
    if not res.offline and res.revision != res.commit:
        remember_ref(res)
    return path


def remember_ref(res: Resolution) -> None:
    """Record revision -> commit in the cache's refs/ (the huggingface_hub layout), written atomically.

    We download by commit so the listing and the files come from one snapshot; huggingface_hub only records a
    ref when it is given a branch name, so without this an offline run could not map 'v1' to the snapshot."""
    import os
    import tempfile

    ref = repo_cache_path(res.repo_id) / "refs" / res.revision
    if ref.is_file() and ref.read_text().strip() == res.commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=ref.parent, prefix=".ref-")
    with os.fdopen(fd, "w") as f:
        f.write(res.commit)
    os.replace(tmp, ref)


def verify_variant(path: Path) -> None:
    """Check every file of a variant folder against its metadata.json digest; raise KernelUnavailable if not."""
    from kernels._rust import Digest, DigestAlgorithm, DigestValidationError, Metadata

    name = f"{path.parent.parent.name}/build/{path.name}" if path.parent.name == "build" else str(path)
    try:
        meta = Metadata.read_from_file(path / "metadata.json")
    except ValueError as e:
        raise KernelUnavailable(f"{name}: metadata.json is invalid ({str(e).splitlines()[0]})", stage="verify")
    expected = meta.digest
    if expected is None:
        raise KernelUnavailable(f"{name}: metadata.json has no digest, so its files cannot be verified",
                                stage="verify")
    algorithm = DigestAlgorithm.SHA512 if str(expected.algorithm).upper().endswith("512") else DigestAlgorithm.SHA256
    try:
        actual = Digest.hash_variant(algorithm, path)
        expected.validate(actual)
    except DigestValidationError as e:
        problems = [str(v) for v in e.violations]
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise KernelUnavailable(f"{name}: digest check failed: {'; '.join(problems[:3])}{more}", stage="verify")
    except OSError as e:
        raise KernelUnavailable(f"{name}: cannot read files to verify them ({e})", stage="verify")


def discard_variant(path: Path) -> None:
    """Remove a refused variant's snapshot entries and the blobs they point to."""
    if not path.exists():
        return
    for p in path.rglob("*"):
        if p.is_symlink():
            target = p.resolve()
            if target.is_file() and target.parent.name == "blobs":
                target.unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
