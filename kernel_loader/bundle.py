"""Air-gapped bundles: everything a lock file pins, in one tar, imported into a cache with no Hub.

Layout of OUT.tar (plain regular files only, written in a fixed order)::

    bundle.json                                        format, the kernels.lock and its digests, trust records
    kernels/<org>/<name>/<commit>/build/<variant>/...  the variant's files

Import trusts nothing in the tar: the lock inside must parse, every member must be a regular file whose name is
expected by that lock (no '..', absolute paths, links, devices, unknown names, duplicates, or sizes over the
limits), and every file's sha256 must equal the locked digest. Files are streamed into temp files in the cache's
``blobs/`` and renamed to their sha256 name; only after every file of the bundle has been verified are the
``snapshots/<commit>/...`` symlinks (metadata.json last, since that is what marks a variant as present), the
``refs/vN`` and the trust records written, each by ``os.replace``. A failed import leaves no snapshot entry and
removes the blobs it created.

Importing a bundle is an administrator's act of trust: its repos are recorded as trusted ('bundle') so that
offline loads accept them, as a download after an online trust check would. The installed variants are then
read back through :func:`kernel_loader.pipeline.acquire` offline, exactly as a load would read them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cache import atomic_file, atomic_symlink, atomic_write, blobs_dir, refs_dir, variant_path
from .cachestate import record_trust, repo_lock, trust_record
from .env import env_bytes
from .errors import KernelUnavailable
from .fetch import verify_variant
from .integrity import safe_relpath
from .lockfile import LockFile, digests_path, parse_lock, read_lock, render_lock
from .pipeline import acquire
from .spec import parse_spec

FORMAT = "kernel-loader-bundle/1"
MANIFEST = "bundle.json"
MAX_MANIFEST_BYTES = 16 << 20


def max_member_bytes() -> int:
    return env_bytes("KERNEL_LOADER_BUNDLE_MAX_FILE", 4 << 30)


def max_total_bytes() -> int:
    return env_bytes("KERNEL_LOADER_BUNDLE_MAX_TOTAL", 64 << 30)


@dataclass(frozen=True)
class ImportResult:
    kernels: list[tuple[str, str, str]]  # (repo_id, commit, variant)
    files: int
    bytes: int


# ---------------------------------------------------------------------------------------------- export


def export_bundle(lock: LockFile, out: str | Path, *, variants: list[str] | None = None) -> Path:
    """Write the locked variants (all, or those named) from the local cache into ``out`` (atomically)."""
    out = Path(out)
    rows, missing = [], []
    for entry in sorted(lock.kernels.values(), key=lambda e: e.repo_id):
        if not entry.variants:
            raise ValueError(f"{entry.repo_id}: the lock has no digests (kernels.lock.digests), so a bundle could "
                             "not be verified on import; write the lock with `kernel-loader lock`")
        for name in sorted(entry.variants):
            if variants and name not in variants:
                continue
            path = variant_path(entry.repo_id, entry.commit, name)
            if not (path / "metadata.json").is_file():
                missing.append(f"{entry.repo_id} {name}")
                continue
            try:
                verify_variant(path, locked=entry.variants[name])
            except KernelUnavailable as e:
                raise ValueError(f"cannot bundle {entry.repo_id} {name}: {e.reason}") from None
            rows.append((entry, name, path))
    if missing:
        raise ValueError(f"not in the cache: {', '.join(missing)}; run `kernel-loader download --lock "
                         f"{lock.path or 'kernels.lock'} --all-variants` while online first")
    if not rows:
        raise ValueError(f"nothing to bundle: no locked variant matches {variants}")
    lock_text, digests_text = render_lock(LockFile({e.repo_id: e for e, _, _ in rows}))
    manifest = {"format": FORMAT, "kernels.lock": lock_text, "kernels.lock.digests": digests_text,
                "trust": {e.repo_id: sorted(trust_record(e.repo_id)) for e, _, _ in rows},
                "variants": {e.repo_id: sorted(n for e2, n, _ in rows if e2 is e) for e, _, _ in rows}}
    with atomic_file(out) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        for entry, name, path in rows:
            files = ["metadata.json", *sorted(entry.variants[name].files)]
            for rel in files:
                data = (path / rel).read_bytes()
                _add_bytes(tar, f"kernels/{entry.repo_id}/{entry.commit}/build/{name}/{rel}", data)
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = len(data), 0o644, 0, 0, 0
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------- import


def import_bundle(path: str | Path) -> ImportResult:
    """Verify and install a bundle into the cache (KERNELS_CACHE or HF_HUB_CACHE); raise ValueError naming the
    first bad member and leave the cache as it was."""
    path = Path(path)
    try:
        tar = tarfile.open(path, mode="r:*")
    except (OSError, tarfile.TarError) as e:
        raise ValueError(f"{path}: not a readable tar file ({e})") from None
    created: list[Path] = []
    try:
        with tar:
            lock, trust, expected = _read_manifest(path, tar)
            blobs = _receive_files(path, tar, expected, created)
        result = _install(lock, trust, expected, blobs)
    except (tarfile.TarError, EOFError) as e:
        _remove(created)
        raise ValueError(f"{path}: corrupt tar ({e})") from None
    except BaseException:
        _remove(created)
        raise
    return result


def _read_manifest(path: Path, tar: tarfile.TarFile):
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg():
        raise ValueError(f"{path}: the first member must be the regular file {MANIFEST}, got "
                         f"{first.name if first else 'an empty tar'!r}")
    if first.size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path}: {MANIFEST} is {first.size} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(tar.extractfile(first).read())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: {MANIFEST} is not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    lock_text, digests_text = manifest.get("kernels.lock"), manifest.get("kernels.lock.digests")
    if not isinstance(lock_text, str) or not isinstance(digests_text, str):
        raise ValueError(f"{path}: {MANIFEST} must carry 'kernels.lock' and 'kernels.lock.digests' texts")
    lock = parse_lock(lock_text, digests_text, where=f"{path}:{MANIFEST}")
    trust = manifest.get("trust", {})
    if not isinstance(trust, dict):
        raise ValueError(f"{path}: {MANIFEST} 'trust' must be an object")
    expected: dict[str, tuple[str, str, str, str, str]] = {}  # member -> (repo, commit, variant, rel, b64)
    for entry in lock.kernels.values():
        if not entry.variants:
            raise ValueError(f"{path}: {entry.repo_id} has no locked digests in the bundle")
        for name, v in entry.variants.items():
            base = f"kernels/{entry.repo_id}/{entry.commit}/build/{name}/"
            expected[base + "metadata.json"] = (entry.repo_id, entry.commit, name, "metadata.json", v.metadata_sha256)
            for rel, digest in v.files.items():
                expected[base + rel] = (entry.repo_id, entry.commit, name, rel, digest)
    return lock, trust, expected


def _receive_files(path: Path, tar: tarfile.TarFile, expected: dict, created: list[Path]) -> dict[str, str]:
    """Stream every member into a verified blob; returns member name -> sha256 hex (the blob name)."""
    got: dict[str, str] = {}
    total, limit, limit_total = 0, max_member_bytes(), max_total_bytes()
    while (m := tar.next()) is not None:
        name = m.name
        safe_relpath(name, what=f"{path} member")
        kind = ("symlink" if m.issym() else "hard link" if m.islnk() else "device" if (m.ischr() or m.isblk())
                else "fifo" if m.isfifo() else "directory" if m.isdir() else None if m.isreg() else "special file")
        if kind is not None:
            raise ValueError(f"{path}: member {name!r} is a {kind}; bundles hold regular files only")
        if name not in expected:
            raise ValueError(f"{path}: member {name!r} is not a file the bundle's lock lists")
        if name in got:
            raise ValueError(f"{path}: member {name!r} appears twice")
        if m.size > limit or total + m.size > limit_total:
            raise ValueError(f"{path}: member {name!r} is {m.size} bytes; limits are {limit} per file and "
                             f"{limit_total} in all (KERNEL_LOADER_BUNDLE_MAX_FILE / _MAX_TOTAL)")
        total += m.size
        repo_id, commit, variant, rel, digest = expected[name]
        blobs = blobs_dir(repo_id)
        blobs.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".import-", suffix=".incomplete")
        created.append(Path(tmp))
        with os.fdopen(fd, "wb") as f:
            n = 0
            while chunk := src.read(1 << 20):
                n += len(chunk)
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if n != m.size:
            raise ValueError(f"{path}: member {name!r} is truncated ({n} of {m.size} bytes)")
        actual = base64.b64encode(h.digest()).decode()
        if actual != digest:
            raise ValueError(f"{path}: member {name!r} has sha256 {actual}, but the lock says {digest}")
        blob = blobs / h.hexdigest()
        if blob.is_file():
            os.unlink(tmp)  # identical content already present (content-addressed name)
        else:
            os.replace(tmp, blob)
            created.append(blob)
        created.remove(Path(tmp))
        got[name] = h.hexdigest()
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ValueError(f"{path}: {len(missing)} locked file(s) missing from the bundle, e.g. {missing[0]!r}")
    return got


def _install(lock: LockFile, trust: dict, expected: dict, blobs: dict[str, str]) -> ImportResult:
    installed = []
    size = 0
    for entry in sorted(lock.kernels.values(), key=lambda e: e.repo_id):
        with repo_lock(entry.repo_id):
            for name in sorted(entry.variants):
                base = f"kernels/{entry.repo_id}/{entry.commit}/build/{name}/"
                members = sorted((m for m in expected if m.startswith(base)),
                                 key=lambda m: m.endswith("/metadata.json"))
                for member in members:  # metadata.json last: it is what marks the variant as present
                    rel = expected[member][3]
                    link = variant_path(entry.repo_id, entry.commit, name) / rel
                    atomic_symlink(link, os.path.relpath(blobs_dir(entry.repo_id) / blobs[member], link.parent))
                    size += (blobs_dir(entry.repo_id) / blobs[member]).stat().st_size
                installed.append((entry.repo_id, entry.commit, name))
            if entry.version is not None or entry.revision is not None:
                atomic_write(refs_dir(entry.repo_id) / entry.ref, entry.commit.encode())
            record_trust(entry.repo_id, entry.commit, "bundle")
        # Read back as a load would (offline: trusted commit, files against the lock's digests).
        try:
            acquire(parse_spec(f"{entry.repo_id}@{entry.commit}"), entry=entry, variants=sorted(entry.variants),
                    offline=True)
        except KernelUnavailable as e:
            raise ValueError(f"bundle of {entry.repo_id}: installed files do not verify: {e.reason}") from None
    return ImportResult(installed, len(blobs), size)


def _remove(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def lock_from_args(lock_path: str | Path) -> LockFile:
    lock = read_lock(lock_path)
    if not digests_path(Path(lock_path)).is_file():
        raise ValueError(f"{lock_path} has no digests file {digests_path(Path(lock_path))}; bundles need one "
                         "(write the lock with `kernel-loader lock`)")
    return lock
