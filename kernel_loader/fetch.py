"""Download one variant into the standard Hub cache and verify every file before anything is imported.

Downloads go through :func:`kernel_loader.hubrepo.download_variant` into huggingface_hub's cache layout, by paths
we build (no server header or listing name becomes a path unchecked), metadata.json first and every size bounded
before the first byte of any other file; temp files + rename mean a cut download never looks complete, and only
``build/<variant>/`` is fetched.

Verification uses the digest format of the `kernels` library (``metadata.json: digest{algorithm, files}``,
base64 sha256 per file, computed by the library's ``Digest``): a file whose hash differs, a listed file that is
missing and a file that is not listed are all refused. A refused variant's files are removed from the cache so the
next attempt downloads them again instead of failing on the same bad bytes.
"""

from __future__ import annotations

from pathlib import Path

from . import _kernels
from .cache import cache_dir, discard_variant, repo_cache_path, variant_path, write_ref
from .errors import KernelUnavailable
from .hub_client import HubServerError, HubUnreachable
from .hubrepo import download_variant
from .integrity import check_metadata, sha256_b64
from .resolve import Resolution
from .spec import KernelSpec

def variant_dir(res: Resolution) -> Path:
    return variant_path(res.repo_id, res.commit, str(res.variant))


def fetch(spec: KernelSpec, res: Resolution, *, locked=None) -> Path:
    """Return the verified local folder of ``res.variant`` (downloading it unless resolved offline).

    A variant already complete in the cache is verified and used without any request, so a warm cache costs no
    Hub traffic (this is what makes N ranks after the first free). A download whose digest check fails is
    discarded and downloaded once more (a flipped byte in transit is transient); a second failure is final.
    ``locked`` (a :class:`kernel_loader.lock.LockedVariant`) also requires metadata.json to be the locked one."""
    if res.variant is None:
        raise ValueError("fetch() needs a resolution with a variant")
    path = variant_dir(res)
    if (path / "metadata.json").is_file():
        try:
            verify_variant(path, locked=locked)
            if not res.offline and res.revision != res.commit:
                _remember_ref_quietly(res)
            return path
        except KernelUnavailable:
            discard_variant(path)
            if res.offline:
                raise
    elif res.offline:
        raise KernelUnavailable(f"{res.repo_id} variant {res.variant} is not in the cache {cache_dir()}; "
                                f"run `kernel-loader download {spec}` while online", stage="fetch")
    for attempt in (1, 2):
        try:
            _download(spec, res)
        except KernelUnavailable:
            discard_variant(path)  # files that did arrive must not make a partial variant look present
            raise
        if not (path / "metadata.json").is_file():
            raise KernelUnavailable(f"{res.repo_id} variant {res.variant} is not in the cache {cache_dir()} after "
                                    "download", stage="fetch")
        try:
            verify_variant(path, locked=locked)
            break
        except KernelUnavailable:
            discard_variant(path)
            if attempt == 2:
                raise
    if res.revision != res.commit:
        _remember_ref_quietly(res)
    return path


def _download(spec: KernelSpec, res: Resolution) -> None:
    try:
        download_variant(spec, repo_cache_path(res.repo_id), res.commit, str(res.variant))
    except HubServerError as e:
        raise KernelUnavailable(f"download of {res.repo_id} variant {res.variant} failed: {e.reason}",
                                stage="fetch") from None
    except HubUnreachable as e:
        raise KernelUnavailable(f"download of {res.repo_id} variant {res.variant} failed: Hub unreachable ({e})",
                                stage="fetch") from None


def _remember_ref_quietly(res: Resolution) -> None:
    try:
        remember_ref(res)
    except OSError:  # read-only cache: the files are fine, only offline 'vN' lookup is not recorded
        pass


def remember_ref(res: Resolution) -> None:
    """Record revision -> commit in the cache's refs/ (the huggingface_hub layout), written atomically.

    We download by commit so the listing and the files come from one snapshot; huggingface_hub only records a
    ref when it is given a branch name, so without this an offline run could not map 'v1' to the snapshot."""
    write_ref(res.repo_id, res.revision, res.commit)


def verify_variant(path: Path, *, locked=None) -> None:
    """Check every file of a variant folder against its metadata.json digest (and, with ``locked``, metadata.json
    against the lock file); raise KernelUnavailable if not."""
    Digest, DigestAlgorithm = _kernels.Digest, _kernels.DigestAlgorithm
    name = f"{path.parent.parent.name}/build/{path.name}" if path.parent.name == "build" else str(path)
    try:
        raw = (path / "metadata.json").read_bytes()
        meta = check_metadata(raw, where=name)
    except OSError as e:
        raise KernelUnavailable(f"{name}: cannot read metadata.json ({e})", stage="verify")
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="verify")
    if locked is not None and sha256_b64(raw) != locked.metadata_sha256:
        raise KernelUnavailable(f"{name}: metadata.json differs from the lock file's (sha256 {sha256_b64(raw)} != "
                                f"locked {locked.metadata_sha256}); the published files changed since locking",
                                stage="verify")
    expected = meta.digest
    if expected is None:
        raise KernelUnavailable(f"{name}: metadata.json has no digest, so its files cannot be verified",
                                stage="verify")
    algorithm = DigestAlgorithm.SHA512 if str(expected.algorithm).upper().endswith("512") else DigestAlgorithm.SHA256
    try:
        actual = Digest.hash_variant(algorithm, path)
        expected.validate(actual)
    except _kernels.DigestValidationError as e:
        problems = [str(v) for v in e.violations]
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise KernelUnavailable(f"{name}: digest check failed: {'; '.join(problems[:3])}{more}", stage="verify")
    except OSError as e:
        raise KernelUnavailable(f"{name}: cannot read files to verify them ({e})", stage="verify")
