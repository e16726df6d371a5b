"""``kernel-loader build`` arguments and handler, for the main CLI to mount as a subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backends import BuildError
from .builder import build_variant
from .config import BuildConfigError


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kernel_dir", type=Path, help="kernel source directory (holds build.toml)")
    parser.add_argument("--variant", help="variant to build; refused unless this machine builds it (default: its own)")
    parser.add_argument("--out", type=Path, default=None, help="output root; the variant goes to OUT/<variant>/ "
                        "(default: KERNEL_DIR/build)")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: ninja's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show compiler command lines and output")


def run_build(args: argparse.Namespace) -> int:
    """Returns a process exit code: 0 built, 2 bad build.toml or request, 1 build failure."""
    try:
        build_variant(args.kernel_dir, out_dir=args.out, variant=args.variant, jobs=args.jobs, verbose=args.verbose)
    except BuildConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel_loader.build", description="Build a kernel variant.")
    add_build_arguments(parser)
    return run_build(parser.parse_args(argv))
