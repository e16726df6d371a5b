"""Lock files: pin every kernel of a project to a commit and every variant's files to their digests.

Two files, side by side:

- ``kernels.lock`` is exactly the `kernels` library's format (``kernels lock`` writes the same; its
  ``KernelLocks.from_json`` reads ours): a JSON list of ``{"dependency": {"repo-id", "version"|"revision"},
  "lock": {"commit"}}``. Its parser refuses unknown keys, so digests cannot live in it.
- ``kernels.lock.digests`` (``<lock path>.digests``) adds, per repo and variant, the sha256 of metadata.json and
  the metadata digest of every file. A lock written by ``kernels lock`` alone (no digests file) still pins the
  commit; the files are then checked against the commit's own metadata.json only.

``kernel-loader lock [PROJECT_DIR]`` reads ``[tool.kernels.dependencies]`` from pyproject.toml (the table `kernels`
users already write: ``"org/name" = 1``) and locks every variant, or only ``--variant`` ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .integrity import check_commit, check_digest_files, check_metadata, safe_relpath, sha256_b64
from .spec import KernelSpec, parse_spec

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
        return f"v{self.version}" if self.version is not None else (self.revision or self.commit)


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
        repo_id = _repo_id(dep["repo-id"], at)
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


def _repo_id(value, at: str) -> str:
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
    from kernels._rust import KernelDependency, KernelLock, KernelLocks, KernelVersion

    locks = {}
    for k in lock.kernels.values():
        version = KernelVersion.Version(k.version) if k.version is not None else KernelVersion.Revision(k.revision)
        locks[KernelDependency(repo_id=k.repo_id, version=version)] = KernelLock(commit=k.commit)
    # Exactly what `kernels lock` writes: KernelLocks.to_json() with no trailing newline (tests compare bytes).
    text = KernelLocks(locks=locks).to_json() if locks else "[]"
    digests = {"format": DIGESTS_FORMAT, "kernels": {
        k.repo_id: {"commit": k.commit, "variants": {
            v.variant: {"algorithm": v.algorithm, "metadata.json": v.metadata_sha256, "files": v.files}
            for v in sorted(k.variants.values(), key=lambda v: v.variant)}}
        for k in sorted(lock.kernels.values(), key=lambda k: k.repo_id)}}
    return text, json.dumps(digests, indent=2, sort_keys=True) + "\n"


def write_lock(lock: LockFile, path: str | Path) -> Path:
    from .cachestate import atomic_write

    path = Path(path)
    text, digests = render_lock(lock)
    atomic_write(digests_path(path), digests.encode())
    atomic_write(path, text.encode())
    lock.path = path
    return path


def project_dependencies(project_dir: str | Path) -> dict[str, int]:
    """``[tool.kernels.dependencies]`` of PROJECT_DIR/pyproject.toml: repo id -> version."""
    from kernels.compat import tomllib

    pyproject = Path(project_dir) / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read {pyproject}: {e}") from None
    deps = data.get("tool", {}).get("kernels", {}).get("dependencies")
    example = '[tool.kernels.dependencies]\n"kernels-community/flash-attn2" = 1'
    if not isinstance(deps, dict) or not deps:
        raise ValueError(f"{pyproject} has no [tool.kernels.dependencies] table; add one, e.g.\n{example}")
    out = {}
    for repo, version in deps.items():
        _repo_id(repo, f"{pyproject} [tool.kernels.dependencies]")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{pyproject}: version of {repo!r} is {version!r}; expected a positive integer "
                             f"(the Hub branch vN), e.g.\n{example}")
        out[repo] = version
    return out


def lock_kernels(deps: dict[str, int], *, variants: list[str] | None = None, trust=None) -> LockFile:
    """Ask the Hub for the commit of each ``repo: version`` and the digests of every (or each chosen) variant."""
    from . import hubrepo
    from .cachestate import record_trust
    from .containment import Limits
    from .fallback import KernelUnavailable
    from .resolve import _parse_variants, _pick_version, hub_offline, version_branches
    from .trust import check_trust

    if hub_offline():
        raise KernelUnavailable("locking needs the Hub, and HF_HUB_OFFLINE is set", stage="resolve")
    limits = Limits.from_env()
    kernels: dict[str, LockedKernel] = {}
    for repo_id, version in sorted(deps.items()):
        spec = parse_spec(repo_id, version=version)
        how = check_trust(spec, offline=False, trust=trust)  # before any other request to the Hub
        try:
            versions = version_branches(hubrepo.list_refs(spec))
            _, commit = _pick_version(spec, {int(k): v for k, v in versions.items()})
            found, _ = _parse_variants(hubrepo.list_variant_names(spec, f"v{version}", commit, limits),
                                       where=f"{repo_id}@v{version}")
            have = sorted(v.variant_str for v in found)
            chosen = have if not variants else [v for v in have if v in variants]
            if not chosen:
                raise ValueError(f"{repo_id}@v{version} has none of the variants {variants}; have: "
                                 f"{', '.join(have) or 'none'}")
            locked = {}
            for name in chosen:
                raw, meta, _ = hubrepo.read_metadata(spec, commit, name, limits, stage="resolve")
                if meta.digest is None or not str(meta.digest.algorithm).lower().endswith("256"):
                    raise KernelUnavailable(f"{repo_id} build/{name}/metadata.json has no sha256 digest; cannot "
                                            "lock it", stage="verify")
                locked[name] = LockedVariant(name, sha256_b64(raw), dict(meta.digest.files))
        except hubrepo.HubServerError as e:
            raise KernelUnavailable(e.reason, stage="resolve") from None
        except hubrepo.HubUnreachable as e:
            raise KernelUnavailable(f"locking {repo_id} needs the Hub {hubrepo.hubio.endpoint()}, which is "
                                    f"unreachable ({e})", stage="resolve") from None
        kernels[repo_id] = LockedKernel(repo_id, commit, version, None, locked)
        record_trust(repo_id, commit, how)
    return LockFile(kernels)


def download_locked(lock: LockFile, *, all_variants: bool = False, trust=None) -> list[tuple[str, str, Path]]:
    """Prefetch what ``lock`` pins: this machine's variant of each kernel, or every locked variant. Each is
    downloaded at the locked commit and verified against the lock. Returns (repo_id, variant, folder) rows."""
    from .cachestate import record_trust, repo_lock
    from .fallback import KernelUnavailable
    from .fetch import fetch
    from .resolve import Resolution, hub_offline, resolve
    from .system import detect
    from .trust import check_trust

    offline = hub_offline()
    done = []
    for entry in sorted(lock.kernels.values(), key=lambda e: e.repo_id):
        spec = parse_spec(f"{entry.repo_id}@{entry.commit}")
        how = check_trust(spec, offline=offline, trust=trust)
        with repo_lock(entry.repo_id):
            if all_variants:
                if not entry.variants:
                    where = lock.path or Path("kernels.lock")
                    raise ValueError(f"{where} has no digests file ({digests_path(where)}), so its variants are "
                                     "unknown; write one with `kernel-loader lock`")
                names = sorted(entry.variants)
            else:
                res = resolve(spec, detect(), offline=offline)
                if res.variant is None:
                    raise KernelUnavailable(f"no variant of {entry.repo_id}@{entry.commit[:12]} for this machine; "
                                            f"{res.summary()}", stage="resolve")
                if entry.variants and res.variant not in entry.variants:
                    raise KernelUnavailable(f"{entry.repo_id}: this machine's variant {res.variant} is not locked "
                                            f"(locked: {', '.join(sorted(entry.variants))})", stage="resolve")
                names = [res.variant]
            for name in names:
                res = Resolution(entry.repo_id, entry.ref, entry.commit, name, [], offline=offline)
                path = fetch(spec, res, locked=entry.variants.get(name))
                if not offline:
                    record_trust(entry.repo_id, entry.commit, how)
                done.append((entry.repo_id, name, path))
    return done
