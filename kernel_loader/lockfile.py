"""Lock files (the format): pin every kernel of a project to a commit and every variant's files to their digests.

Two files, side by side:

- ``kernels.lock`` is exactly the `kernels` library's format (``kernels lock`` writes the same; its
  ``KernelLocks.from_json`` reads ours): a JSON list of ``{"dependency": {"repo-id", "version"|"revision"},
  "lock": {"commit"}}``. Its parser refuses unknown keys, so digests cannot live in it.
- ``kernels.lock.digests`` (``<lock path>.digests``) adds, per repo and variant, the sha256 of metadata.json and
  the metadata digest of every file. A lock written by ``kernels lock`` alone (no digests file) still pins the
  commit; the files are then checked against the commit's own metadata.json only.

Reading and writing them is here; making one from the Hub and prefetching what one pins is :mod:`kernel_loader.lock`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import _kernels
from .cache import atomic_write
from .integrity import check_commit, check_digest_files, safe_relpath
from .spec import KernelSpec, branch_of_version, parse_spec

DIGESTS_FORMAT = "kernel-loader-digests/1"
MAX_LOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class LockedVariant:
    variant: str
    metadata_sha256: str  # base64 sha256 of build/<variant>/metadata.json
    files: dict[str, str]  # path inside the variant -> base64 digest (as in metadata.json)
    algorithm: str = "sha256"


@dataclass(frozen=True)
class LockedKernel:
    repo_id: str
    commit: str
    version: int | None = None  # the Hub branch vN it was locked from
    revision: str | None = None  # or a branch/tag/commit name (kernels' KernelVersion.Revision)
    variants: dict[str, LockedVariant] = field(default_factory=dict)  # empty: no digests recorded

    @property
    def ref(self) -> str:
        return branch_of_version(self.version) if self.version is not None else (self.revision or self.commit)


@dataclass
class LockFile:
    kernels: dict[str, LockedKernel]
    path: Path | None = None

    def entry(self, spec: KernelSpec) -> LockedKernel:
        """The locked entry for ``spec``; ValueError if it is missing or the spec asks for something else."""
        where = self.path or "the lock"
        e = self.kernels.get(spec.repo_id)
        if e is None:
            have = ", ".join(sorted(self.kernels)) or "nothing"
            raise ValueError(f"{spec.repo_id} is not in {where}; it locks: {have}. "
                             f"Add it to [tool.kernels.dependencies] and run `kernel-loader lock`")
        if spec.version is not None and e.version is not None and spec.version != e.version:
            raise ValueError(f"{spec} asks for v{spec.version} but {where} locks {spec.repo_id} to v{e.version}")
        if spec.revision is not None and spec.version is None and spec.revision not in (e.revision, e.commit):
            raise ValueError(f"{spec} asks for revision {spec.revision!r} but {where} locks {spec.repo_id} to "
                             f"{e.ref} ({e.commit})")
        return e


def digests_path(lock_path: Path) -> Path:
    return Path(str(lock_path) + ".digests")


# ---------------------------------------------------------------------------------------------- reading


def parse_lock(text: str, digests_text: str | None = None, *, where: str = "kernels.lock") -> LockFile:
    """Parse a kernels.lock (and optionally its digests file); raise ValueError naming what is wrong."""
    if not isinstance(text, str) or len(text) > MAX_LOCK_BYTES:
        raise ValueError(f"{where}: not a text of at most {MAX_LOCK_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a JSON list of {{dependency, lock}} entries (kernels format), "
                         f"got {type(data).__name__}")
    kernels: dict[str, LockedKernel] = {}
    for i, item in enumerate(data):
        at = f"{where} entry {i}"
        if not isinstance(item, dict) or set(item) != {"dependency", "lock"}:
            raise ValueError(f"{at}: expected exactly the keys 'dependency' and 'lock', got {item!r:.120}")
        dep, lk = item["dependency"], item["lock"]
        if not isinstance(dep, dict) or "repo-id" not in dep or not (set(dep) in ({"repo-id", "version"},
                                                                            {"repo-id", "revision"})):
            raise ValueError(f"{at}: dependency must be {{'repo-id', 'version'}} or {{'repo-id', 'revision'}}, "
                             f"got {dep!r:.120}")
        if not isinstance(lk, dict) or set(lk) != {"commit"}:
            raise ValueError(f"{at}: lock must be {{'commit': <40 hex>}}, got {lk!r:.120}")
        repo_id = repo_id_of(dep["repo-id"], at)
        version = revision = None
        if "version" in dep:
            version = dep["version"]
            if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 10**6:
                raise ValueError(f"{at}: version {version!r} of {repo_id} must be a positive integer")
        else:
            revision = dep["revision"]
            if not isinstance(revision, str):
                raise ValueError(f"{at}: revision {revision!r} of {repo_id} must be a string")
            parse_spec(f"{repo_id}@{revision}")  # same rules as spec strings (ValueError names it)
        commit = check_commit(lk["commit"], what=f"{at} ({repo_id})")
        if repo_id in kernels:
            raise ValueError(f"{at}: {repo_id} is locked twice")
        kernels[repo_id] = LockedKernel(repo_id, commit, version, revision)
    if digests_text is not None:
        _apply_digests(kernels, digests_text, where=f"{where}.digests")
    return LockFile(kernels)


def repo_id_of(value, at: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{at}: repo-id {value!r} must be a string 'org/name'")
    spec = parse_spec(value)  # ValueError names the bad id
    if spec.revision is not None or spec.function is not None or spec.paged:
        raise ValueError(f"{at}: repo-id {value!r} must be a bare 'org/name'")
    return spec.repo_id


def _apply_digests(kernels: dict[str, LockedKernel], text: str, *, where: str) -> None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != DIGESTS_FORMAT or not isinstance(data.get("kernels"), dict):
        raise ValueError(f"{where}: expected {{'format': {DIGESTS_FORMAT!r}, 'kernels': {{...}}}}")
    for repo_id, entry in data["kernels"].items():
        at = f"{where} {repo_id!r}"
        if repo_id not in kernels:
            raise ValueError(f"{at}: not in the lock file itself (have: {', '.join(sorted(kernels)) or 'none'})")
        if not isinstance(entry, dict) or not isinstance(entry.get("variants"), dict):
            raise ValueError(f"{at}: expected {{'commit', 'variants'}}")
        if entry.get("commit") != kernels[repo_id].commit:
            raise ValueError(f"{at}: commit {entry.get('commit')!r} differs from the lock's "
                             f"{kernels[repo_id].commit}")
        variants = {}
        for name, v in entry["variants"].items():
            vat = f"{at} variant {name!r}"
            _variant_name(name, vat)
            if not isinstance(v, dict) or v.get("algorithm") != "sha256":
                raise ValueError(f"{vat}: expected {{'algorithm': 'sha256', 'metadata.json', 'files'}}")
            files = check_digest_files(v.get("files"), what=vat)
            meta = v.get("metadata.json")
            check_digest_files({"m": meta}, what=f"{vat} metadata.json")
            variants[name] = LockedVariant(name, meta, files)
        k = kernels[repo_id]
        kernels[repo_id] = LockedKernel(k.repo_id, k.commit, k.version, k.revision, variants)


def _variant_name(name, at: str) -> str:
    from kernels.variants import parse_variant

    safe_relpath(name, what=at)
    if "/" in name:
        raise ValueError(f"{at}: variant name {name!r} contains '/'")
    try:
        parse_variant(name)
    except Exception:
        raise ValueError(f"{at}: {name!r} is not a build variant name (e.g. torch213-cxx11-cpu-x86_64-linux, "
                         "torch-cpu)") from None
    return name


def read_lock(path: str | Path) -> LockFile:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read lock file {path}: {e}") from None
    dpath = digests_path(path)
    digests = None
    if dpath.is_file():
        try:
            digests = dpath.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {dpath}: {e}") from None
    lock = parse_lock(text, digests, where=str(path))
    lock.path = path
    return lock


# ---------------------------------------------------------------------------------------------- writing


def render_lock(lock: LockFile) -> tuple[str, str]:
    """(kernels.lock text in the kernels format, digests file text)."""
    KernelDependency, KernelLock, KernelVersion = _kernels.KernelDependency, _kernels.KernelLock, _kernels.KernelVersion
    locks = {}
    for k in lock.kernels.values():
        version = KernelVersion.Version(k.version) if k.version is not None else KernelVersion.Revision(k.revision)
        locks[KernelDependency(repo_id=k.repo_id, version=version)] = KernelLock(commit=k.commit)
    # Exactly what `kernels lock` writes: KernelLocks.to_json() with no trailing newline (tests compare bytes).
    text = _kernels.KernelLocks(locks=locks).to_json() if locks else "[]"
    digests = {"format": DIGESTS_FORMAT, "kernels": {
        k.repo_id: {"commit": k.commit, "variants": {
            v.variant: {"algorithm": v.algorithm, "metadata.json": v.metadata_sha256, "files": v.files}
            for v in sorted(k.variants.values(), key=lambda v: v.variant)}}
        for k in sorted(lock.kernels.values(), key=lambda k: k.repo_id)}}
    return text, json.dumps(digests, indent=2, sort_keys=True) + "\n"


def write_lock(lock: LockFile, path: str | Path) -> Path:
    path = Path(path)
    text, digests = render_lock(lock)
    atomic_write(digests_path(path), digests.encode())
    atomic_write(path, text.encode())
    lock.path = path
    return path
