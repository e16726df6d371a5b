"""``kernel-loader matrix``: the variant list per kernel, the GitHub Actions include list, what builds here, and
what exists locally and on a Hub repo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_commands(sub) -> None:
    mx = sub.add_parser("matrix", help="variants per kernel from kernel_repos/matrix.toml (--github, --local, --status)")
    add_matrix_arguments(mx)
    mx.set_defaults(func=run_matrix)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=None, help="folder of kernel repos (default: ./kernel_repos)")
    p.add_argument("--matrix", type=Path, default=None, help="matrix file (default: ROOT/matrix.toml)")
    p.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--github", action="store_true", help="the Actions strategy.matrix value {include: [...]}")
    mode.add_argument("--local", action="store_true",
                      help="the variants this machine can build (torch in .venv/.venv-*, nvcc for CUDA)")
    mode.add_argument("--status", action="store_true", help="table: which variants exist locally / on the Hub")
    p.add_argument("--hub", help="with --status: ORG (repo ORG/<kernel> each) or ORG/NAME (one kernel)")
    p.add_argument("--revision", help="with --hub: branch to read (default: v<version> from build.toml)")
    p.add_argument("--update-workflow", type=Path, metavar="WORKFLOW",
                   help="with --github: rewrite the generated include block of this workflow file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run_matrix(args) -> int:
    from .. import matrix as m

    root = args.root or m.default_root()
    matrix = m.load_matrix(args.matrix or root / m.MATRIX_FILE)
    kernels = m.discover_kernels(root)
    if args.kernel:
        names = {k.name for k in kernels}
        unknown = [k for k in args.kernel if k not in names]
        if unknown:
            raise ValueError(f"--kernel {unknown[0]!r} is not a kernel under {root}; have: {sorted(names)}")
        kernels = [k for k in kernels if k.name in args.kernel]
    entries = m.expand(matrix, kernels, checkout_root=root.resolve().parent)

    if args.github:
        include = m.github_include(matrix, entries)
        if args.update_workflow:
            changed = m.update_workflow(args.update_workflow, include)
            _err(f"{args.update_workflow}: {'updated' if changed else 'already up to date'} "
                        f"({len(entries)} jobs)")
        else:
            print(json.dumps(include, indent=None if not args.json else 2))
        return 0
    if args.update_workflow:
        raise ValueError("--update-workflow goes with --github")

    if args.local:
        plan = m.local_plan(entries, m.find_build_envs(root.resolve().parent), m.nvcc_version())
        if args.json:
            print(json.dumps([{"kernel": b.entry.kernel, "variant": b.entry.variant,
                               "python": str(b.env.python) if b.env else None,
                               "torch": b.env.torch if b.env else None, "reason": b.reason} for b in plan], indent=2))
            return 0
        for b in plan:
            if b.env:
                print(f"{b.entry.kernel}  {b.entry.variant}  (torch {b.env.torch}: {b.env.python})")
        skipped = [b for b in plan if b.env is None]
        for b in skipped:
            _err(f"not here: {b.entry.kernel} {b.entry.variant}: {b.reason}")
        return 0

    if args.status:
        hub = None
        if args.hub:
            hub = {}
            for k in kernels:
                if "/" in args.hub:
                    if len(kernels) > 1 and args.hub.split("/", 1)[1] != k.name:
                        continue
                    repo = args.hub
                else:
                    repo = f"{args.hub}/{k.name}"
                hub[k.name] = (repo, args.revision or f"v{k.version}")
        rows = m.status(entries, kernels, hub=hub)
        if args.json:
            print(json.dumps([r.__dict__ for r in rows], indent=2, default=list))
        else:
            print(m.format_status(rows, hub=hub is not None))
        return 0

    by_kernel: dict[str, list[str]] = {k.name: [] for k in kernels}
    for e in entries:
        by_kernel[e.kernel].append(e.variant)
    if args.json:
        print(json.dumps(by_kernel, indent=2))
    else:
        for name, variants in by_kernel.items():
            print(f"{name} ({len(variants)} variants)")
            for v in variants:
                print(f"  {v}")
    return 0
