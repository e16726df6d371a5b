"""Publish plans: executed into a real local Hub (git), and for a remote Hub checked call by call against a
recorder that validates each call against huggingface_hub.HfApi's real signatures (no network here).
Refusals: dirty tree, public API change without a version bump, digest mismatch, version mismatch."""

from __future__ import annotations

import inspect
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_kernels import make_tiny_kernel

from kernel_loader.cli import main as cli
from kernel_loader.publish import publish_local
from kernel_loader.publish import (
    LocalGitTarget,
    PublishRefused,
    RemoteHubTarget,
    plan_publish,
)

V = "torch-cpu"
SCHEMA = "_tiny_{rev}::fwd(Tensor q, float scale) -> Tensor"


def tiny(build_dir: Path, *, value=1, version=1, init_extra="", schema=None, dirty=None, **kw) -> Path:
    """A tiny variant, optionally with an __all__ line, recorded op schemas and provenance (metadata only)."""
    extra = dict(kw.pop("extra_files", {}))
    if schema is not None:
        extra["build-info.json"] = json.dumps({"ops": ["fwd"], "op_schemas": {"fwd": schema}})
    vdir = make_tiny_kernel(build_dir, value=value, version=version, extra_files=extra, **kw)
    if init_extra:
        init = vdir / "__init__.py"
        init.write_text(init.read_text() + init_extra)
        _reseal(vdir)
    if dirty is not None:
        meta = json.loads((vdir / "metadata.json").read_text())
        meta["provenance"] = {"kernel-builder": {"version": "test"}, "kernel": {"commit": "a" * 40, "dirty": dirty}}
        (vdir / "metadata.json").write_text(json.dumps(meta))
    return vdir


def _reseal(vdir: Path) -> None:
    from kernels._rust import Digest, DigestAlgorithm

    meta = json.loads((vdir / "metadata.json").read_text())
    digest = Digest.hash_variant(DigestAlgorithm.SHA256, vdir)
    meta["digest"] = {"algorithm": "sha256", "files": dict(digest.files)}
    (vdir / "metadata.json").write_text(json.dumps(meta))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------- local


def test_plan_and_local_execution(tmp_path):
    build = tmp_path / "k"
    tiny(build, value=1, extra_files={"old.py": "X = 1\n"})
    (build / "CARD.md").write_text("# tiny\n\ncard v1\n")
    target = LocalGitTarget(tmp_path / "hub", "acme/plan")
    plan = plan_publish(build, target, card=build / "CARD.md")
    assert (plan.branch, plan.version, plan.variants, plan.base_commit) == ("v1", 1, (V,), None)
    assert sorted(a.path_in_repo for a in plan.additions) == [
        f"build/{V}/{f}" for f in ("__init__.py", "impl.py", "metadata.json", "old.py")]
    assert plan.deletions == () and plan.readme == b"# tiny\n\ncard v1\n"
    assert not (tmp_path / "hub").exists()  # planning writes nothing
    first = target.execute(plan)
    assert git(first.repo_path, "show", "main:README.md") == "# tiny\n\ncard v1"
    assert git(first.repo_path, "show", "v1:README.md") == "# tiny\n\ncard v1"  # branched from main

    tiny(build, value=2)  # old.py gone
    plan2 = plan_publish(build, target, card=build / "CARD.md")
    assert plan2.deletions == (f"build/{V}/old.py",) and plan2.readme is None  # README unchanged: not re-sent
    assert plan2.base_commit == first.commit
    second = target.execute(plan2)
    files = git(second.repo_path, "ls-tree", "-r", "--name-only", "v1").splitlines()
    assert f"build/{V}/old.py" not in files and f"build/{V}/impl.py" in files
    assert "VALUE = 2" in git(second.repo_path, "show", f"v1:build/{V}/__init__.py")

    # A plan made against an old head is refused at execution (someone published in between).
    with pytest.raises(RuntimeError, match="moved since the plan was made"):
        target.execute(plan2)


def test_dirty_build_is_refused_unless_allowed(tmp_path):
    build = tmp_path / "k"
    tiny(build, dirty=True)
    with pytest.raises(PublishRefused, match=rf"dirty tree: variant {V} was built from a dirty tree.*--allow-dirty"):
        publish_local(build, "acme/dirty", tmp_path / "hub", 1)
    assert not (tmp_path / "hub" / "kernels" / "acme" / "dirty").exists()
    assert publish_local(build, "acme/dirty", tmp_path / "hub", 1, allow_dirty=True).changed
    tiny(build, dirty=False)  # a clean rebuild goes through without the flag
    res = publish_local(build, "acme/dirty", tmp_path / "hub", 1)
    meta = json.loads(git(res.repo_path, "show", f"v1:build/{V}/metadata.json"))
    assert res.changed and meta["provenance"]["kernel"]["dirty"] is False


def test_uncommitted_kernel_sources_are_refused(tmp_path):
    kdir = tmp_path / "src"
    tiny(kdir)
    (kdir / "build.toml").write_text("[general]\nname = 'tiny-kernel'\n")
    (kdir / ".gitignore").write_text("build/\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(kdir), *args], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    assert publish_local(kdir, "acme/src", tmp_path / "hub", 1).changed  # clean: fine
    (kdir / "build.toml").write_text("[general]\nname = 'tiny-kernel'\nversion = 1\n")
    with pytest.raises(PublishRefused, match=r"src has uncommitted changes \(git status\)"):
        publish_local(kdir, "acme/src", tmp_path / "hub", 1)


def test_api_change_needs_a_version_bump(tmp_path):
    build, hub = tmp_path / "k", tmp_path / "hub"
    tiny(build, init_extra="__all__ = ['add', 'value']\n", schema=SCHEMA.format(rev="aaa"))
    publish_local(build, "acme/api", hub, 1)

    # Same API, new build (different namespace, other code): fine on the same branch.
    tiny(build, value=5, init_extra="__all__ = ['add', 'value']\n", schema=SCHEMA.format(rev="bbb"))
    assert publish_local(build, "acme/api", hub, 1).changed

    tiny(build, init_extra="__all__ = ['add', 'value', 'mul']\ndef mul(a, b):\n    return a * b\n",
         schema="_tiny_ccc::fwd(Tensor q, float scale, bool causal) -> Tensor")
    with pytest.raises(PublishRefused) as err:
        publish_local(build, "acme/api", hub, 1)
    msg = str(err.value)
    assert "acme/api v1" in msg and "__all__ adds mul" in msg
    assert ("op fwd schema changed: fwd(Tensor q, float scale) -> Tensor -> "
            "fwd(Tensor q, float scale, bool causal) -> Tensor") in msg
    assert "Bump general.version in build.toml to 2" in msg
    # The bump: published as v2, v1 untouched.
    tiny(build, version=2, init_extra="__all__ = ['add', 'value', 'mul']\ndef mul(a, b):\n    return a * b\n",
         schema="_tiny_ccc::fwd(Tensor q, float scale, bool causal) -> Tensor")
    assert publish_local(build, "acme/api", hub, 2).branch == "v2"

    # A new variant is compared with one of the same backend already on the branch.
    tiny(build, variant="torch213-cxx11-cpu-x86_64-linux", init_extra="__all__ = ['add']\n")
    with pytest.raises(PublishRefused, match=r"torch213-cxx11-cpu-x86_64-linux \(compared with torch-cpu\): "
                                             r"__all__ removes value"):
        publish_local(build, "acme/api", hub, 1, variants=["torch213-cxx11-cpu-x86_64-linux"])


# ---------------------------------------------------------------------------------------------- remote


class RecordingHfApi:
    """Records the calls a remote publish makes; NOT a Hub. Each call is first bound to the real
    huggingface_hub.HfApi method's signature (a wrong argument name fails here as it would there), and the
    commits are applied to an in-memory branch -> files map so a second publish sees the first."""

    def __init__(self, branches: dict | None = None):
        from huggingface_hub import HfApi

        self._real = HfApi
        self.calls: list[tuple[str, dict]] = []
        self.branches = branches if branches is not None else {}  # name -> {path: bytes}
        self.exists = bool(self.branches)
        self.heads = {b: f"{i:040x}" for i, b in enumerate(self.branches, 1)}
        self.tmp = None

    def _record(self, name, *args, **kw):
        bound = inspect.signature(getattr(self._real, name)).bind(None, *args, **kw)
        args = dict(bound.arguments)
        args.pop("self")
        self.calls.append((name, args))
        return args

    def list_repo_refs(self, *a, **kw):
        from huggingface_hub.errors import RepositoryNotFoundError

        self._record("list_repo_refs", *a, **kw)
        if not self.exists:
            raise RepositoryNotFoundError("not found", response=SimpleNamespace(headers={}, status_code=404,
                                                                                 request=None, url=""))
        return SimpleNamespace(branches=[SimpleNamespace(name=b, target_commit=self.heads[b]) for b in self.branches])

    def list_repo_files(self, *a, **kw):
        args = self._record("list_repo_files", *a, **kw)
        return sorted(self.branches[args["revision"]])

    def hf_hub_download(self, *a, **kw):
        from huggingface_hub.errors import EntryNotFoundError

        args = self._record("hf_hub_download", *a, **kw)
        data = self.branches.get(args["revision"], {}).get(args["filename"])
        if data is None:
            raise EntryNotFoundError(f"{args['filename']} not found")
        path = Path(self.tmp) / f"dl-{len(self.calls)}"
        path.write_bytes(data)
        return str(path)

    def create_repo(self, *a, **kw):
        self._record("create_repo", *a, **kw)
        self.exists = True
        self.branches.setdefault("main", {})
        self.heads.setdefault("main", "0" * 39 + "m")

    def create_branch(self, *a, **kw):
        args = self._record("create_branch", *a, **kw)
        self.branches[args["branch"]] = dict(self.branches[args["revision"]])
        self.heads[args["branch"]] = self.heads[args["revision"]]

    def create_commit(self, *a, **kw):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        args = self._record("create_commit", *a, **kw)
        files = self.branches[args["revision"]]
        if args.get("parent_commit") not in (None, self.heads[args["revision"]]):
            raise RuntimeError("parent_commit is not the branch head")
        for op in args["operations"]:
            if isinstance(op, CommitOperationAdd):
                src = op.path_or_fileobj
                files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
            elif isinstance(op, CommitOperationDelete):
                files.pop(op.path_in_repo)
        self.heads[args["revision"]] = f"{len(self.calls):040x}"
        return SimpleNamespace(oid=self.heads[args["revision"]])


def test_remote_publish_makes_exactly_these_calls(tmp_path):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    build = tmp_path / "k"
    tiny(build, value=1, extra_files={"old.py": "X = 1\n"}, init_extra="__all__ = ['add']\n")
    (build / "CARD.md").write_text("# card\n")
    api = RecordingHfApi()
    api.tmp = tmp_path
    target = RemoteHubTarget(api, "acme/remote")
    plan = plan_publish(build, target)
    assert plan.readme == b"# card\n" and not plan.branch_exists
    result = target.execute(plan)
    writes = [(n, a) for n, a in api.calls if n.startswith("create_")]
    assert [n for n, _ in writes] == ["create_repo", "create_commit", "create_branch", "create_commit"]
    assert writes[0][1] == {"repo_id": "acme/remote", "repo_type": "kernel", "exist_ok": True}
    readme = writes[1][1]
    assert (readme["revision"], readme["repo_type"]) == ("main", "kernel")
    assert [(o.path_in_repo, o.path_or_fileobj) for o in readme["operations"]] == [("README.md", b"# card\n")]
    assert writes[2][1] == {"repo_id": "acme/remote", "branch": "v1", "revision": "main", "repo_type": "kernel",
                            "exist_ok": True}
    commit = writes[3][1]
    assert (commit["revision"], commit["parent_commit"], commit["repo_type"]) == ("v1", None, "kernel")
    assert all(isinstance(o, CommitOperationAdd) for o in commit["operations"])
    assert sorted(o.path_in_repo for o in commit["operations"]) == [
        f"build/{V}/{f}" for f in ("__init__.py", "impl.py", "metadata.json", "old.py")]
    assert result.branch == "v1" and result.commit == api.heads["v1"]

    # Second publish: branch exists, old.py is deleted, pinned to the head; same card -> no README commit.
    api.calls.clear()
    tiny(build, value=2, init_extra="__all__ = ['add']\n")
    head = api.heads["v1"]
    target.execute(plan_publish(build, target))
    writes = [(n, a) for n, a in api.calls if n.startswith("create_")]
    assert [n for n, _ in writes] == ["create_repo", "create_commit"]
    ops = writes[1][1]["operations"]
    assert [o.path_in_repo for o in ops if isinstance(o, CommitOperationDelete)] == [f"build/{V}/old.py"]
    assert writes[1][1]["parent_commit"] == head
    assert "VALUE = 2" in api.branches["v1"][f"build/{V}/__init__.py"].decode()

    # API change against what the remote branch holds: refused before any write.
    api.calls.clear()
    tiny(build, value=3, init_extra="__all__ = ['add', 'value']\n")
    with pytest.raises(PublishRefused, match=r"__all__ adds value"):
        plan_publish(build, target)
    assert not [n for n, _ in api.calls if n.startswith("create_")]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_publish_refusals_and_success(tmp_path, capsys, monkeypatch):
    build, hub = tmp_path / "k", tmp_path / "hub"
    vdir = tiny(build, dirty=True)
    base = ["publish", str(build), "--repo", "acme/cli", "--root", str(hub)]
    assert cli(base) == 2
    assert "dirty tree" in capsys.readouterr().err
    assert cli([*base, "--version", "2", "--allow-dirty"]) == 2
    assert "--version 2 but the variants were built as version 1" in capsys.readouterr().err
    assert cli([*base, "--allow-dirty"]) == 0
    out = capsys.readouterr().out
    assert f"publish acme/cli v1 (new branch from main): {V}" in out and "committed" in out

    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert cli(["publish", str(build), "--repo", "acme/cli", "--remote", "--allow-dirty"]) == 2
    assert "--remote needs a write token in HF_TOKEN" in capsys.readouterr().err
    assert cli(["publish", str(build), "--repo", "acme/cli"]) == 2
    assert "give --root" in capsys.readouterr().err

    (vdir / "impl.py").write_text("def add(a, b):\n    return a - b\n")  # tampered after the build
    assert cli([*base, "--allow-dirty"]) == 2
    err = capsys.readouterr().err
    assert f"{V} do not match the digest" in err and "impl.py" in err
