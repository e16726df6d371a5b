"""Publishing a repo that stock transformers pins to a version (``FLASH_ATTN_KERNEL_VERSIONS``, read from the installed
transformers) also points that ``vN`` branch at the published files, so ``attn_implementation="org/name"`` without
``enable()`` finds the branch it asks for. A real release on that branch is never moved."""

from __future__ import annotations

import subprocess

import pytest

from kernel_loader.publish import publish_local
from kernel_loader.publish.local import transformers_pinned_branch
from tiny_kernels import make_tiny_kernel

hub_kernels = pytest.importorskip("transformers.integrations.hub_kernels")

REPO = "kernels-community/flash-attn2"


def _tree(repo_path, branch):
    return subprocess.run(["git", f"--git-dir={repo_path}", "rev-parse", f"refs/heads/{branch}^{{tree}}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_pinned_branch_is_what_transformers_asks_for():
    assert transformers_pinned_branch(REPO) == f"v{hub_kernels.get_attn_kernel_version(REPO)}"
    assert transformers_pinned_branch("acme/not-pinned") is None  # transformers would ask for its default v1


def test_publish_points_the_pinned_branch_at_the_files_and_follows_republishes(tmp_path):
    pinned = transformers_pinned_branch(REPO)
    build = tmp_path / "build-a"
    make_tiny_kernel(build, name="flash-attn2", value=1)
    first = publish_local(build, REPO, tmp_path / "hub", 1, allow_dirty=True)
    assert first.branch == "v1" and first.pinned_branch == pinned
    git_dir = first.repo_path / ".git" if (first.repo_path / ".git").exists() else first.repo_path
    assert _tree(git_dir, pinned) == _tree(git_dir, "v1")
    make_tiny_kernel(build, name="flash-attn2", value=2)
    second = publish_local(build, REPO, tmp_path / "hub", 1, allow_dirty=True)
    assert second.changed and second.pinned_branch == pinned and _tree(git_dir, pinned) == _tree(git_dir, "v1")


def test_a_real_release_on_the_pinned_branch_is_left_alone(tmp_path):
    pinned = transformers_pinned_branch(REPO)
    n = int(pinned[1:])
    real = tmp_path / "real"
    make_tiny_kernel(real, name="flash-attn2", value=7, version=n)
    publish_local(real, REPO, tmp_path / "hub", n, allow_dirty=True)
    older = tmp_path / "older"
    make_tiny_kernel(older, name="flash-attn2", value=1)
    result = publish_local(older, REPO, tmp_path / "hub", 1, allow_dirty=True)
    git_dir = result.repo_path / ".git" if (result.repo_path / ".git").exists() else result.repo_path
    assert result.pinned_branch is None and _tree(git_dir, pinned) != _tree(git_dir, "v1")
