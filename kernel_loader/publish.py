"""Publishing built variants: one plan, executed into a local Hub folder (git) or onto a remote Hub.

    target = LocalGitTarget(root, "org/name")            # or RemoteHubTarget(HfApi(token=...), "org/name")
    plan = plan_publish(kernel_dir, target, version=1)   # validates, reads the branch, checks API and provenance
    result = target.execute(plan)

A :class:`PublishPlan` says everything a publish will do: branch ``v<version>``, every file to add (the whole
folder of each published variant), every file to delete (files on the branch under a replaced variant that the
new build no longer has), and the README for ``main`` (the kernel's CARD.md, only when it differs). Planning
refuses, with a message naming the variant or file:
- a variant whose files do not match its metadata.json digest;
- a build from a dirty git tree (metadata provenance ``dirty``, or uncommitted changes in the kernel dir)
  unless ``allow_dirty``;
- a change of public API relative to the same variant (else one of the same backend) already on the branch:
  the package's ``__all__`` or its op schemas (build-info.json ``op_schemas``, else op names). Changing the API
  means a new version: bump ``general.version`` in build.toml, which publishes to a new branch.

The remote target makes exactly: ``create_repo(repo_type="kernel", exist_ok=True)``, a commit of README.md to
main when it changed, ``create_branch`` from main when the branch is new, and one ``create_commit`` with
``CommitOperationAdd``/``CommitOperationDelete`` pinned to the branch head the plan was made against
(``parent_commit``), so a concurrent publish fails instead of being overwritten.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .hub import (
    PublishResult,
    _check_digest,
    _check_servable,
    _Git,
    _open_or_init,
    _variant_dirs,
    kernel_repo_path,
    validate_repo_id,
)

CARD_FILE = "CARD.md"


class PublishRefused(ValueError):
    """The publish would break a rule (dirty tree, API change without a version bump); nothing was written."""


# ---------------------------------------------------------------------------------------------- API record


@dataclass(frozen=True)
class ApiRecord:
    """The public API of one variant: exported names and op schemas (namespace stripped)."""

    exports: tuple[str, ...]
    ops: dict  # op name -> schema without the namespace, or None when only names were recorded

    @staticmethod
    def from_files(init_py: str | None, build_info: str | None) -> "ApiRecord":
        from .selftest import exports_from_source

        exports: set[str] = set()
        if init_py is not None:
            try:
                exports = exports_from_source(init_py)
            except SyntaxError:
                exports = set()
        ops: dict = {}
        if build_info:
            info = json.loads(build_info)
            schemas = info.get("op_schemas")
            if isinstance(schemas, dict):
                ops = {name: _strip_namespace(schema) for name, schema in schemas.items()}
            else:
                ops = {name: None for name in info.get("ops", [])}
        return ApiRecord(exports=tuple(sorted(exports)), ops=ops)

    def diff(self, old: "ApiRecord") -> list[str]:
        """Human-readable differences from ``old`` (empty when the API is the same)."""
        out = []
        added, removed = sorted(set(self.exports) - set(old.exports)), sorted(set(old.exports) - set(self.exports))
        if added:
            out.append(f"__all__ adds {', '.join(added)}")
        if removed:
            out.append(f"__all__ removes {', '.join(removed)}")
        for name in sorted(set(old.ops) - set(self.ops)):
            out.append(f"op {name} removed")
        for name in sorted(set(self.ops) - set(old.ops)):
            out.append(f"op {name} added")
        for name in sorted(set(self.ops) & set(old.ops)):
            a, b = old.ops[name], self.ops[name]
            if a is not None and b is not None and a != b:
                out.append(f"op {name} schema changed: {a} -> {b}")
        return out


def _strip_namespace(schema: str) -> str:
    # "_flash_attn2_cpu_953a6e0431::fwd(Tensor q, ...) -> ..." -> "fwd(Tensor q, ...) -> ..."; the namespace is
    # per build by design, so it is not part of the API.
    return re.sub(r"^[A-Za-z_][A-Za-z0-9_]*::", "", schema.strip())


def _local_api(variant_dir: Path) -> ApiRecord:
    init, info = variant_dir / "__init__.py", variant_dir / "build-info.json"
    return ApiRecord.from_files(init.read_text() if init.is_file() else None,
                                info.read_text() if info.is_file() else None)


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FileAddition:
    path_in_repo: str  # "build/<variant>/<file>"
    source: Path
    executable: bool = False


@dataclass(frozen=True)
class PublishPlan:
    repo_id: str
    version: int
    branch: str  # "v<version>"
    variants: tuple[str, ...]
    additions: tuple[FileAddition, ...]
    deletions: tuple[str, ...]  # paths on the branch under a replaced variant that the new build lacks
    readme: bytes | None  # new README.md for main (CARD.md), None when main already has it
    message: str
    base_commit: str | None  # branch head when planned; None when the branch does not exist yet
    dirty: tuple[str, ...] = ()  # what was dirty (published anyway with allow_dirty)
    api: dict = field(default_factory=dict)  # variant -> ApiRecord of what is published

    @property
    def branch_exists(self) -> bool:
        return self.base_commit is not None

    def describe(self) -> str:
        lines = [f"publish {self.repo_id} {self.branch} "
                 f"({'update' if self.branch_exists else 'new branch from main'}): {', '.join(self.variants)}",
                 f"  add {len(self.additions)} files, delete {len(self.deletions)}"
                 + (", README.md on main from CARD.md" if self.readme is not None else "")]
        lines += [f"  delete {p}" for p in self.deletions]
        if self.dirty:
            lines.append(f"  dirty (allowed): {'; '.join(self.dirty)}")
        return "\n".join(lines)


class HubTarget(Protocol):
    repo_id: str

    def head(self, branch: str) -> str | None: ...
    def list_files(self, branch: str) -> list[str]: ...
    def read(self, branch: str, path: str) -> bytes | None: ...
    def execute(self, plan: PublishPlan) -> PublishResult: ...


def check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive int (it becomes branch v<version>), got {version!r}")
    return version


def metadata_version(dirs: list[Path]) -> int:
    """The version every variant's metadata.json carries (they must agree)."""
    versions = {d.name: json.loads((d / "metadata.json").read_text()).get("version") for d in dirs}
    distinct = set(versions.values())
    if len(distinct) != 1 or not isinstance(next(iter(distinct)), int):
        raise ValueError(f"variants disagree on metadata.json version: {versions}; rebuild them from one build.toml")
    return distinct.pop()


def dirty_reasons(dirs: list[Path], kernel_dir: Path | None) -> list[str]:
    from .build.variant import git_status

    out = []
    for d in dirs:
        meta = json.loads((d / "metadata.json").read_text())
        kernel = (meta.get("provenance") or {}).get("kernel") or {}
        if kernel.get("dirty"):
            out.append(f"variant {d.name} was built from a dirty tree (metadata.json provenance.kernel.dirty, "
                       f"commit {str(kernel.get('commit', '?'))[:12]})")
    if kernel_dir is not None and (Path(kernel_dir) / "build.toml").is_file():
        state = git_status(Path(kernel_dir))
        if state is not None and state["dirty"]:
            out.append(f"{kernel_dir} has uncommitted changes (git status)")
    return out


def _counterpart(variant: str, on_branch: set[str]) -> str | None:
    """The variant on the branch to compare APIs with: the same name, else one of the same backend."""
    if variant in on_branch:
        return variant
    from kernels.variants import parse_variant

    def backend(v: str) -> str | None:
        try:
            p = parse_variant(v)
        except ValueError:
            return None
        return getattr(p.arch, "backend_name", None) or p.arch.backend.name

    mine = backend(variant)
    same = sorted(v for v in on_branch if backend(v) == mine)
    return same[0] if same else None


def plan_publish(
    build_dir: Path | str,
    target: HubTarget,
    version: int | None = None,
    *,
    variants: list[str] | None = None,
    message: str | None = None,
    kernel_dir: Path | str | None = None,
    card: Path | str | None = None,
    allow_dirty: bool = False,
    verify_digest: bool = True,
) -> PublishPlan:
    """Plan publishing ``build_dir/build/<variant>/`` folders to branch ``v<version>`` of ``target``.

    ``version`` defaults to the variants' metadata.json version. ``kernel_dir`` (default: ``build_dir`` when it
    holds a build.toml) is checked for uncommitted changes. ``card`` (default: CARD.md of ``kernel_dir``, else of
    ``build_dir``) becomes README.md on main.
    """
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise ValueError(f"build_dir {build_dir} does not exist or is not a directory")
    dirs = _variant_dirs(build_dir, variants)
    version = check_version(metadata_version(dirs) if version is None else version)
    if verify_digest:
        for d in dirs:
            _check_digest(d)
    if kernel_dir is None and (build_dir / "build.toml").is_file():
        kernel_dir = build_dir
    dirty = dirty_reasons(dirs, Path(kernel_dir) if kernel_dir is not None else None)
    if dirty and not allow_dirty:
        raise PublishRefused("refusing to publish from a dirty tree: " + "; ".join(dirty)
                             + ". Commit the kernel sources and rebuild, or pass --allow-dirty (allow_dirty=True)")

    branch = f"v{version}"
    head = target.head(branch)
    existing = target.list_files(branch) if head is not None else []
    on_branch = {p.split("/")[1] for p in existing if p.startswith("build/") and p.count("/") >= 2}

    api = {d.name: _local_api(d) for d in dirs}
    changes = []
    for d in dirs:
        other = _counterpart(d.name, on_branch)
        if other is None:
            continue
        old = ApiRecord.from_files(_text(target.read(branch, f"build/{other}/__init__.py")),
                                   _text(target.read(branch, f"build/{other}/build-info.json")))
        diff = api[d.name].diff(old)
        if diff:
            where = d.name if other == d.name else f"{d.name} (compared with {other})"
            changes.append(f"{where}: {'; '.join(diff)}")
    if changes:
        raise PublishRefused(
            f"refusing to publish to {target.repo_id} {branch}: the public API differs from what {branch} already "
            f"has, and a version's API must not change. " + " | ".join(changes)
            + f". Bump general.version in build.toml to {version + 1} and rebuild (it publishes to v{version + 1})")

    additions, deletions = [], []
    for d in dirs:
        new = set()
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d)
            if not p.is_file() or "__pycache__" in rel.parts or p.suffix in (".pyc", ".pyo"):
                continue
            path = f"build/{d.name}/{rel.as_posix()}"
            new.add(path)
            additions.append(FileAddition(path, p, executable=os.access(p, os.X_OK)))
        deletions += sorted(p for p in existing if p.startswith(f"build/{d.name}/") and p not in new)

    readme = None
    card_path = Path(card) if card is not None else Path(kernel_dir if kernel_dir is not None else build_dir) / CARD_FILE
    if card_path.is_file():
        text = card_path.read_bytes()
        if target.read("main", "README.md") != text:
            readme = text
    elif card is not None:
        raise ValueError(f"card {card} does not exist")

    names = tuple(d.name for d in dirs)
    return PublishPlan(repo_id=target.repo_id, version=version, branch=branch, variants=names,
                       additions=tuple(additions), deletions=tuple(deletions), readme=readme,
                       message=message or f"Publish {target.repo_id} {branch}: {', '.join(names)}",
                       base_commit=head, dirty=tuple(dirty), api=api)


def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", errors="replace") if data is not None else None


# ---------------------------------------------------------------------------------------------- local (git)


class LocalGitTarget:
    """A bare git repo per kernel under a local Hub root (what ``kernel-loader hub serve`` serves)."""

    def __init__(self, root: Path | str, repo_id: str):
        org, name = validate_repo_id(repo_id)
        _check_servable(org, name)
        self.repo_id = repo_id
        self.root = Path(root)
        self.path = kernel_repo_path(self.root, repo_id)

    def _git(self) -> _Git | None:
        return _Git(self.path) if (self.path / "HEAD").is_file() else None

    def head(self, branch: str) -> str | None:
        git = self._git()
        return git.ref(f"refs/heads/{branch}") if git else None

    def list_files(self, branch: str) -> list[str]:
        git = self._git()
        if git is None or git.ref(f"refs/heads/{branch}") is None:
            return []
        out = git.out("ls-tree", "-r", "--name-only", "-z", f"refs/heads/{branch}")
        return [p for p in out.split("\0") if p]

    def read(self, branch: str, path: str) -> bytes | None:
        git = self._git()
        if git is None:
            return None
        res = git("cat-file", "blob", f"refs/heads/{branch}:{path}", check=False)
        return res.stdout if res.returncode == 0 else None

    def execute(self, plan: PublishPlan) -> PublishResult:
        base = _open_or_init(self.path, plan.repo_id)
        with tempfile.TemporaryDirectory(prefix="kernel-loader-publish-") as tmp:
            git = _Git(base.git_dir, index_file=Path(tmp) / "index")
            if plan.readme is not None:
                _commit_files(git, "refs/heads/main", {"README.md": plan.readme}, "Update README.md from CARD.md")
            old = git.ref(f"refs/heads/{plan.branch}")
            if old != plan.base_commit:
                raise RuntimeError(f"branch {plan.branch} of {plan.repo_id} moved since the plan was made "
                                   f"({plan.base_commit} -> {old}); plan again")
            parent = old or git.ref("refs/heads/main")
            git("read-tree", parent)
            entries = [f"0 {'0' * 40}\t{p}" for p in plan.deletions]
            if plan.additions:
                blobs = git.out("hash-object", "-w", "--stdin-paths",
                                input="\n".join(str(a.source) for a in plan.additions).encode()).split()
                entries += [f"{'100755' if a.executable else '100644'} {blob}\t{a.path_in_repo}"
                            for a, blob in zip(plan.additions, blobs)]
            git("update-index", "--index-info", input=("\n".join(entries) + "\n").encode())
            tree = git.out("write-tree")
            if old is not None and tree == git.out("rev-parse", f"{old}^{{tree}}"):
                return PublishResult(plan.repo_id, plan.branch, old, list(plan.variants), self.path, changed=False)
            commit = git.out("commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", plan.message)
            # Compare-and-swap: fails if someone else moved the branch since we read it.
            res = git("update-ref", f"refs/heads/{plan.branch}", commit, old or "0" * 40, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"branch {plan.branch} of {plan.repo_id} changed during publish (concurrent "
                                   f"publish?); retry. git: {res.stderr.decode(errors='replace').strip()}")
        return PublishResult(plan.repo_id, plan.branch, commit, list(plan.variants), self.path, changed=True)


def _commit_files(git: _Git, ref: str, files: dict, message: str) -> str:
    """Commit ``files`` (path -> bytes) on top of ``ref`` with compare-and-swap; returns the new commit."""
    old = git.ref(ref)
    git("read-tree", old)
    entries = []
    for path, data in files.items():
        blob = git.out("hash-object", "-w", "--stdin", input=data)
        entries.append(f"100644 {blob}\t{path}")
    git("update-index", "--index-info", input=("\n".join(entries) + "\n").encode())
    tree = git.out("write-tree")
    commit = git.out("commit-tree", "--no-gpg-sign", tree, "-p", old, "-m", message)
    res = git("update-ref", ref, commit, old, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{ref} changed during publish; retry. git: {res.stderr.decode(errors='replace').strip()}")
    return commit


# ---------------------------------------------------------------------------------------------- remote Hub


class RemoteHubTarget:
    """A kernel repo on a Hub reached through an ``HfApi``-like object (``huggingface_hub.HfApi``)."""

    REPO_TYPE = "kernel"

    def __init__(self, api, repo_id: str):
        validate_repo_id(repo_id)
        self.api = api
        self.repo_id = repo_id

    def head(self, branch: str) -> str | None:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = self.api.list_repo_refs(self.repo_id, repo_type=self.REPO_TYPE)
        except RepositoryNotFoundError:
            return None
        return next((b.target_commit for b in refs.branches if b.name == branch), None)

    def list_files(self, branch: str) -> list[str]:
        return list(self.api.list_repo_files(self.repo_id, repo_type=self.REPO_TYPE, revision=branch))

    def read(self, branch: str, path: str) -> bytes | None:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            local = self.api.hf_hub_download(self.repo_id, path, repo_type=self.REPO_TYPE, revision=branch)
        except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError):
            return None
        return Path(local).read_bytes()

    def execute(self, plan: PublishPlan) -> PublishResult:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        api, rt = self.api, self.REPO_TYPE
        api.create_repo(plan.repo_id, repo_type=rt, exist_ok=True)
        if plan.readme is not None:
            api.create_commit(plan.repo_id, [CommitOperationAdd("README.md", plan.readme)],
                              commit_message="Update README.md from CARD.md", repo_type=rt, revision="main")
        if not plan.branch_exists:
            api.create_branch(plan.repo_id, branch=plan.branch, revision="main", repo_type=rt, exist_ok=True)
        ops = [CommitOperationAdd(a.path_in_repo, str(a.source)) for a in plan.additions]
        ops += [CommitOperationDelete(p) for p in plan.deletions]
        info = api.create_commit(plan.repo_id, ops, commit_message=plan.message, repo_type=rt, revision=plan.branch,
                                 parent_commit=plan.base_commit)
        return PublishResult(plan.repo_id, plan.branch, getattr(info, "oid", "") or "", list(plan.variants), None,
                             changed=True)


# ---------------------------------------------------------------------------------------------- CLI


def run_publish(args) -> int:
    """``kernel-loader publish``: plan, print it, execute it (local root or --remote)."""
    kernel_dir = Path(args.kernel_dir)
    build_dir = Path(getattr(args, "builds", None) or kernel_dir)
    if (kernel_dir / "build.toml").is_file() and not (build_dir / "build").is_dir():
        raise ValueError(f"{build_dir} has no build/ folder yet; run `kernel-loader build {kernel_dir}` first")
    if args.remote:
        from huggingface_hub import HfApi

        token = os.environ.get("HF_TOKEN")
        if not token:
            raise ValueError("--remote needs a write token in HF_TOKEN")
        target = RemoteHubTarget(HfApi(endpoint=args.endpoint, token=token), args.repo)
    else:
        if args.root is None:
            raise ValueError("give --root (a local Hub folder) or --remote")
        target = LocalGitTarget(args.root, args.repo)
    dirs = _variant_dirs(build_dir, args.variant or None)
    built_as = metadata_version(dirs)
    if args.version is not None and args.version != built_as:
        raise ValueError(f"--version {args.version} but the variants were built as version {built_as} "
                         f"(general.version in build.toml); rebuild, or drop --version")
    plan = plan_publish(build_dir, target, built_as, variants=args.variant or None, message=args.message,
                        kernel_dir=kernel_dir if (kernel_dir / "build.toml").is_file() else None,
                        allow_dirty=args.allow_dirty)
    print(plan.describe())
    result = target.execute(plan)
    state = "committed" if result.changed else "unchanged (same files)"
    print(f"{result.repo_id} {result.branch} {state}: {result.commit[:12]}  variants: {', '.join(result.variants)}")
    return 0
