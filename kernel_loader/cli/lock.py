"""``kernel-loader lock`` and ``kernel-loader bundle export|import``: lock files and air-gapped bundles."""

from __future__ import annotations

from pathlib import Path


def add_commands(sub) -> None:
    lk = sub.add_parser("lock", help="write kernels.lock (+ .digests) for [tool.kernels.dependencies] in "
                        "pyproject.toml")
    lk.add_argument("project_dir", nargs="?", type=Path, default=Path("."), help="folder with pyproject.toml")
    lk.add_argument("--variant", action="append", help="lock only this variant (repeatable; default: all)")
    lk.add_argument("-o", "--output", type=Path, help="lock path (default: PROJECT_DIR/kernels.lock)")
    lk.set_defaults(func=run_lock)

    b = sub.add_parser("bundle", help="air-gapped bundles of locked kernels (export from a cache, import into one)")
    bsub = b.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    ex = bsub.add_parser("export", help="write the locked variants from the cache into one tar")
    ex.add_argument("out", type=Path, help="OUT.tar")
    ex.add_argument("--lock", required=True, type=Path, help="kernels.lock (its .digests file is required)")
    ex.add_argument("--variant", action="append", help="only this variant (repeatable; default: all locked)")
    ex.set_defaults(func=run_bundle_export)
    im = bsub.add_parser("import", help="verify a bundle and install it into the cache (no Hub needed)")
    im.add_argument("bundle", type=Path)
    im.set_defaults(func=run_bundle_import)


def run_lock(args) -> int:
    from ..lock import lock_kernels, project_dependencies
    from ..lockfile import write_lock

    deps = project_dependencies(args.project_dir)
    lock = lock_kernels(deps, variants=args.variant or None)
    out = write_lock(lock, args.output or args.project_dir / "kernels.lock")
    for k in lock.kernels.values():
        print(f"{k.repo_id} {k.ref} -> {k.commit[:12]}: {len(k.variants)} variant(s) "
              f"({', '.join(sorted(k.variants))})")
    print(f"wrote {out} and {out}.digests")
    return 0


def run_bundle_export(args) -> int:
    from ..bundle import export_bundle, lock_from_args

    out = export_bundle(lock_from_args(args.lock), args.out, variants=args.variant or None)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


def run_bundle_import(args) -> int:
    from ..bundle import import_bundle
    from ..cache import cache_dir

    result = import_bundle(args.bundle)
    for repo_id, commit, variant in result.kernels:
        print(f"{repo_id} {commit[:12]} {variant}")
    print(f"imported {result.files} verified files ({result.bytes} bytes) into {cache_dir()}")
    return 0
