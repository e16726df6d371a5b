"""``kernel-loader build KERNEL_DIR``: compile a kernel repo (build.toml) into build/<variant>/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub) -> None:
    b = sub.add_parser("build", help="compile a kernel repo (build.toml) into build/<variant>/ for this machine")
    add_build_arguments(b)
    b.set_defaults(func=run_build)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kernel_dir", type=Path, help="kernel source directory (holds build.toml)")
    parser.add_argument("--variant", action="append", default=None,
                        help="variant to build (repeatable), e.g. torch214-cxx11-cu130-x86_64-linux, "
                        "torch-stable-abi210-cu130-x86_64-linux, torch-cuda (default: the running torch's)")
    parser.add_argument("--all-local", action="store_true",
                        help="also build every variant this machine can build (each torch found, stable ABI)")
    parser.add_argument("--python", action="append", default=None, metavar="PYTHON",
                        help="interpreter whose torch to compile against (repeatable; default: this one, "
                        "$KERNEL_LOADER_BUILD_PYTHONS, .venv*/bin/python)")
    parser.add_argument("--keep-going", action="store_true", help="with several variants: go on after a failure")
    parser.add_argument("--out", type=Path, default=None, help="output root; the variant goes to OUT/<variant>/ "
                        "(default: KERNEL_DIR/build)")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: ninja's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show compiler command lines and output")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_build(args: argparse.Namespace) -> int:
    """0 built, 1 build failure (a bad build.toml or request raises ValueError: exit 2)."""
    from ..build.builder import BuildFailure, build_variant, build_variants

    variants = args.variant or []
    if isinstance(variants, str):
        variants = [variants]
    python = getattr(args, "python", None) or ()
    if len(variants) <= 1 and not getattr(args, "all_local", False):
        build_variant(args.kernel_dir, out_dir=args.out, variant=variants[0] if variants else None,
                      jobs=args.jobs, verbose=args.verbose, python=python or None, progress=_progress)
        return 0
    results = build_variants(args.kernel_dir, variants, all_local=args.all_local, out_dir=args.out,
                             jobs=args.jobs, verbose=args.verbose, python=python,
                             keep_going=getattr(args, "keep_going", False), progress=_progress)
    failed = [r for r in results if isinstance(r, BuildFailure)]
    for f in failed:
        print(f"error: {f.variant}: {f.error}", file=sys.stderr)
    return 1 if failed or len(results) < len(set(variants)) else 0
