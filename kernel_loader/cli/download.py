"""``kernel-loader download SPEC`` / ``download --lock kernels.lock``: fetch and verify into the cache."""

from __future__ import annotations

from pathlib import Path


def add_commands(sub) -> None:
    d = sub.add_parser("download", help="download and verify the variant for this machine into the cache")
    d.add_argument("spec", nargs="?", help="ORG/NAME[@REVISION] (or use --lock)")
    d.add_argument("--version", type=int)
    d.add_argument("--lock", type=Path, help="prefetch what this kernels.lock pins (at the locked commits)")
    d.add_argument("--all-variants", action="store_true", help="with --lock: every locked variant, not just "
                   "this machine's (for bundles and mixed clusters)")
    d.set_defaults(func=run)


def run(args) -> int:
    from ..api import load

    if args.lock is not None:
        from ..lock import download_locked
        from ..lockfile import read_lock

        if args.spec is not None:
            raise ValueError("give either a SPEC or --lock, not both")
        for repo_id, variant, path in download_locked(read_lock(args.lock), all_variants=args.all_variants):
            print(f"{repo_id} variant {variant} verified against {args.lock} at {path}")
        return 0
    if args.spec is None:
        raise ValueError("download needs a SPEC (e.g. kernels-community/flash-attn2@v1) or --lock kernels.lock")
    if args.all_variants:
        raise ValueError("--all-variants needs --lock (a lock file lists the variants)")
    loaded = load(args.spec, version=args.version, strict=True)
    print(f"{loaded.repo_id}@{loaded.revision} ({loaded.commit[:12]}) variant {loaded.variant} verified at "
          f"{loaded.path}")
    return 0
