"""The local target: a bare git repo per kernel under a local Hub root (what ``kernel-loader hub serve`` serves).

Publishing uses git plumbing (a private index, ``commit-tree``, ``update-ref`` with the old value) so it never
touches a working tree, needs no git config, and a concurrent publish to the same branch fails loudly instead of
losing a commit.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ..hub import check_servable, kernel_repo_path
from ..spec import validate_repo_id
from .checks import check_version
from .plan import PublishPlan, PublishResult, plan_publish

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "kernel-loader",
    "GIT_AUTHOR_EMAIL": "kernel-loader@localhost",
    "GIT_COMMITTER_NAME": "kernel-loader",
    "GIT_COMMITTER_EMAIL": "kernel-loader@localhost",
}


class Git:
    """Runs git against one repository with a fixed identity and no dependence on user config."""

    def __init__(self, git_dir: Path, index_file: Path | None = None):
        self.git_dir = git_dir
        self.env = {**os.environ, **_GIT_IDENTITY, "GIT_DIR": str(git_dir), "GIT_TERMINAL_PROMPT": "0"}
        for k in ("GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
            self.env.pop(k, None)
        if index_file is not None:
            self.env["GIT_INDEX_FILE"] = str(index_file)

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True, work_tree: Path | None = None):
        cmd = ["git", "-c", "core.autocrlf=false", "-c", "core.safecrlf=false", "-c", "gc.auto=0"]
        if work_tree is not None:
            cmd += ["--work-tree", str(work_tree)]
        res = subprocess.run([*cmd, *args], env=self.env, input=input, capture_output=True)
        if check and res.returncode != 0:
            raise RuntimeError(
                f"git {' '.join(args)} failed in {self.git_dir} ({res.returncode}): "
                f"{res.stderr.decode(errors='replace').strip()}"
            )
        return res

    def out(self, *args: str, **kw) -> str:
        return self(*args, **kw).stdout.decode().strip()

    def ref(self, name: str) -> str | None:
        res = self("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", check=False)
        return res.stdout.decode().strip() if res.returncode == 0 else None


def _open_or_init(repo: Path, repo_id: str) -> Git:
    if repo.exists():
        res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--absolute-git-dir"], capture_output=True)
        if res.returncode != 0:
            raise ValueError(f"{repo} exists but is not a git repository; move it away or choose another root")
        return Git(Path(res.stdout.decode().strip()))
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "--bare", "--quiet", str(repo)], check=True, capture_output=True)
    git = Git(repo)
    git("symbolic-ref", "HEAD", "refs/heads/main")
    readme = (f"---\nlicense: other\ntags: [kernel]\n---\n# {repo_id}\n\n"
              "Kernel repository published by kernel_loader. Versions are branches `v1`, `v2`, ...; "
              "builds live in `build/<variant>/`.\n")
    blob = git.out("hash-object", "-w", "--stdin", input=readme.encode())
    tree = git.out("mktree", input=f"100644 blob {blob}\tREADME.md\n".encode())
    commit = git.out("commit-tree", "--no-gpg-sign", tree, "-m", f"Create {repo_id}")
    git("update-ref", "refs/heads/main", commit, "0" * 40)
    return git


class LocalGitTarget:
    """A bare git repo per kernel under a local Hub root (what ``kernel-loader hub serve`` serves)."""

    def __init__(self, root: Path | str, repo_id: str):
        org, name = validate_repo_id(repo_id)
        check_servable(org, name)
        self.repo_id = repo_id
        self.root = Path(root)
        self.path = kernel_repo_path(self.root, repo_id)

    def _git(self) -> Git | None:
        return Git(self.path) if (self.path / "HEAD").is_file() else None

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
            git = Git(base.git_dir, index_file=Path(tmp) / "index")
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
                return PublishResult(plan.repo_id, plan.branch, old, list(plan.variants), self.path, changed=False,
                                     pinned_branch=_pin_for_transformers(git, plan.repo_id, plan.branch, old))
            commit = git.out("commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", plan.message)
            # Compare-and-swap: fails if someone else moved the branch since we read it.
            res = git("update-ref", f"refs/heads/{plan.branch}", commit, old or "0" * 40, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"branch {plan.branch} of {plan.repo_id} changed during publish (concurrent "
                                   f"publish?); retry. git: {res.stderr.decode(errors='replace').strip()}")
            pinned = _pin_for_transformers(git, plan.repo_id, plan.branch, commit)
        return PublishResult(plan.repo_id, plan.branch, commit, list(plan.variants), self.path, changed=True,
                             pinned_branch=pinned)


PIN_MARK = "kernel_loader: transformers pin"


def transformers_pinned_branch(repo_id: str) -> str | None:
    """The ``vN`` branch stock transformers loads for ``repo_id`` given without a revision, for the repos it pins
    (``FLASH_ATTN_KERNEL_VERSIONS`` / ``get_attn_kernel_version`` of the installed transformers: v4 for
    kernels-community/flash-attn2 on torch >= 2.10), else None."""
    try:
        from transformers.integrations import hub_kernels
    except Exception:  # not installed: nothing to pin
        return None
    pins = getattr(hub_kernels, "FLASH_ATTN_KERNEL_VERSIONS", {})
    if repo_id not in pins or not callable(getattr(hub_kernels, "get_attn_kernel_version", None)):
        return None  # transformers has no pin for this repo (it would ask for v1, its default)
    try:
        n = int(hub_kernels.get_attn_kernel_version(repo_id))
    except (TypeError, ValueError):
        return None
    return f"v{n}" if n >= 1 else None


def _pin_for_transformers(git: Git, repo_id: str, branch: str, commit: str) -> str | None:
    """Point the branch transformers pins for ``repo_id`` at the files of ``commit`` (a commit of its own on top,
    marked, so a later publish of ``branch`` moves it again). A pinned branch that is a real release (not made
    here) is never touched. Returns the pinned branch when it now holds these files."""
    pinned = transformers_pinned_branch(repo_id)
    if pinned is None or pinned == branch:
        return None
    ref = f"refs/heads/{pinned}"
    tree = git.out("rev-parse", f"{commit}^{{tree}}")
    old = git.ref(ref)
    if old is not None:
        if not git.out("log", "-1", "--format=%B", old).startswith(PIN_MARK):
            return None
        if git.out("rev-parse", f"{old}^{{tree}}") == tree:
            return pinned
    message = (f"{PIN_MARK}: {pinned} of {repo_id} holds the files of {branch} ({commit[:12]}); stock transformers "
               f"asks for {pinned} when given {repo_id} without a revision")
    new = git.out("commit-tree", "--no-gpg-sign", tree, "-p", commit, "-m", message)
    res = git("update-ref", ref, new, old or "0" * 40, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{ref} of {repo_id} changed during publish; retry. git: "
                           f"{res.stderr.decode(errors='replace').strip()}")
    return pinned


def _commit_files(git: Git, ref: str, files: dict, message: str) -> str:
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


def publish_local(
    build_dir: Path | str,
    repo_id: str,
    root: Path | str,
    version: int,
    *,
    message: str | None = None,
    variants: list[str] | None = None,
    verify_digest: bool = True,
    allow_dirty: bool = False,
    kernel_dir: Path | str | None = None,
) -> PublishResult:
    """Commit ``build_dir/build/<variant>/`` folders to branch ``v<version>`` of the local Hub repo.

    Each published variant's folder on the branch is replaced wholesale (a file removed from the build
    disappears from the branch); variants not being published stay. ``__pycache__`` and ``*.pyc`` are never
    committed. ``variants`` restricts the publish to those folder names. With ``verify_digest`` (default) a
    variant whose files do not match its metadata.json digest is refused. A build from a dirty tree and a public
    API change on an existing branch are refused too (see :mod:`kernel_loader.publish`); ``allow_dirty`` permits the first. ``kernel_dir`` (default: ``build_dir`` if it has a build.toml) is
    git-checked and gives CARD.md for main's README.
    """
    target = LocalGitTarget(root, repo_id)  # validates the id first: a bad id is the clearest error
    check_version(version)
    plan = plan_publish(build_dir, target, version, variants=variants, message=message, kernel_dir=kernel_dir,
                        allow_dirty=allow_dirty, verify_digest=verify_digest)
    return target.execute(plan)
