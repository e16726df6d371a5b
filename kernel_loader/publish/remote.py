"""The remote target: a kernel repo on a Hub reached through an ``HfApi``-like object."""

from __future__ import annotations

from pathlib import Path

from ..spec import validate_repo_id
from .plan import PublishPlan, PublishResult


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
