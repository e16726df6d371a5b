"""``kernel-loader publish KERNEL_DIR``: plan, print the plan, execute it (a local Hub root or --remote)."""

from __future__ import annotations

import os
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("publish", help="commit built variants to branch vN of a local Hub folder (git) or a remote Hub")
    p.add_argument("kernel_dir", type=Path, help="kernel repo (build.toml, CARD.md) holding build/<variant>/ after `build`")
    p.add_argument("--builds", type=Path, help="folder holding build/<variant>/ if not KERNEL_DIR (e.g. CI artifacts)")
    p.add_argument("--repo", required=True, help="Hub repo id ORG/NAME, e.g. kernels-community/flash-attn2")
    p.add_argument("--root", type=Path, help="local Hub root (what `hub serve --root` serves)")
    p.add_argument("--remote", action="store_true", help="publish to the Hub at --endpoint/HF_ENDPOINT with HF_TOKEN")
    p.add_argument("--endpoint", help="with --remote: Hub URL (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--version", type=int, help="kernel version N (branch vN); default and must equal: the build's")
    p.add_argument("--variant", action="append", help="publish only this variant (repeatable; default: all)")
    p.add_argument("--allow-dirty", action="store_true", help="publish a build of uncommitted sources")
    p.add_argument("-m", "--message", help="commit message")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..publish import LocalGitTarget, RemoteHubTarget, metadata_version, plan_publish
    from ..publish.checks import variant_dirs

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
    dirs = variant_dirs(build_dir, args.variant or None)
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
    if result.pinned_branch:
        print(f"{result.repo_id} {result.pinned_branch}: the same files (the branch transformers pins for this repo)")
    return 0
