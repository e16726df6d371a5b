"""The ``kernel-loader`` command line: one module per command group, the only modules that print.

Every command talks to the Hub named by HF_ENDPOINT (the local one from ``kernel-loader hub serve`` or
huggingface.co) and uses the standard cache (HF_HUB_CACHE, or KERNELS_CACHE if set).

Exit codes (one mapping, :func:`main`): 0 done, 1 a kernel or build was not available (KernelUnavailable,
BuildError, a failed selftest or build), 2 bad input (ValueError: the message names it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, build, doctor, download, hub, lock, matrix, publish, resolve, selftest

EXAMPLES = """examples:
  kernel-loader doctor
  kernel-loader hub serve --root ./hub --port 8090      # then: export HF_ENDPOINT=http://127.0.0.1:8090
  kernel-loader build kernel_repos/flash-attn2
  kernel-loader publish kernel_repos/flash-attn2 --repo kernels-community/flash-attn2 --root ./hub --version 1
  kernel-loader matrix --status --hub kernels-community    # variants per kernel: matrix, local, Hub
  kernel-loader selftest kernels-community/flash-attn2@v1   # run the variant on its reference.safetensors
  kernel-loader resolve kernels-community/flash-attn2 --json
  kernel-loader download kernels-community/flash-attn2@v1
  kernel-loader bench kernels-community/flash-attn2 --dtype float32   # model tokens/s vs sdpa, alternated
  kernel-loader lock .                                  # [tool.kernels.dependencies] -> kernels.lock(.digests)
  kernel-loader download --lock kernels.lock --all-variants
  kernel-loader bundle export kernels.tar --lock kernels.lock   # then, air-gapped: kernel-loader bundle import

spec strings: [paged|]ORG/NAME[@REVISION][:FUNCTION], e.g. kernels-community/flash-attn2@v1
environment: HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN, HF_HUB_CACHE, KERNELS_CACHE,
             KERNEL_LOADER_TRUST (orgs or org/name, comma separated), KERNEL_LOADER_STRICT=1,
             KERNEL_LOADER_LOCK (a kernels.lock every load is pinned to), KERNEL_LOADER_LISTING_TTL (s, 30)
"""

# Command groups in the order `--help` lists them.
GROUPS = (resolve, download, lock, doctor, bench, build, publish, matrix, selftest, hub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernel-loader",
        description="Resolve, download, verify, build and publish Hub attention kernels.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return p


def exit_code(error: BaseException) -> int | None:
    """The exit code for an error a command raised (after printing it), None for one that is a bug."""
    from ..build.backends import BuildError
    from ..errors import KernelUnavailable

    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, KernelUnavailable):
        print(f"error: {error.reason}", file=sys.stderr)
        return 1
    if isinstance(error, ValueError):  # bad input: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, BuildError):
        print(f"error: {error}", file=sys.stderr)
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (Exception, KeyboardInterrupt) as e:
        code = exit_code(e)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
