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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..selftest.write import exports_from_source
from ..variants import backend_name
from .checks import PublishRefused, check_digest, check_version, dirty_reasons, metadata_version, variant_dirs

CARD_FILE = "CARD.md"


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    branch: str
    commit: str
    variants: list[str]
    repo_path: Path
    changed: bool  # False when the branch already held exactly these files (no new commit)
    pinned_branch: str | None = None  # the branch stock transformers asks for, made to hold these files too


# ---------------------------------------------------------------------------------------------- API record


@dataclass(frozen=True)
class ApiRecord:
    """The public API of one variant: exported names and op schemas (namespace stripped)."""

    exports: tuple[str, ...]
    ops: dict  # op name -> schema without the namespace, or None when only names were recorded

    @staticmethod
    def from_files(init_py: str | None, build_info: str | None) -> "ApiRecord":
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


def _counterpart(variant: str, on_branch: set[str]) -> str | None:
    """The variant on the branch to compare APIs with: the same name, else one of the same backend."""
    if variant in on_branch:
        return variant
    mine = backend_name(variant)
    same = sorted(v for v in on_branch if backend_name(v) == mine)
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
    dirs = variant_dirs(build_dir, variants)
    version = check_version(metadata_version(dirs) if version is None else version)
    if verify_digest:
        for d in dirs:
            check_digest(d)
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
