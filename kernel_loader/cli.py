"""The ``kernel-loader`` command line.

Every command talks to the Hub named by HF_ENDPOINT (the local one from ``kernel-loader hub serve`` or
huggingface.co) and uses the standard cache (HF_HUB_CACHE, or KERNELS_CACHE if set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

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


def cmd_resolve(args) -> int:
    from .fallback import KernelUnavailable
    from .resolve import hub_offline, resolve
    from .spec import parse_spec
    from .system import detect

    spec = parse_spec(args.spec, version=args.version)
    try:
        res = resolve(spec, detect())
    except KernelUnavailable as e:
        if args.json:
            print(json.dumps({"spec": args.spec, "error": e.reason, "stage": e.stage}, indent=2))
        else:
            print(f"error: {e.reason}", file=sys.stderr)
        return 1
    system = detect()
    if args.json:
        out = {"spec": str(spec), "repo_id": res.repo_id, "revision": res.revision, "commit": res.commit,
               "system": system.variant, "offline": res.offline or hub_offline(), "variant": res.variant,
               "decisions": [asdict(d) for d in res.trace], "routed_to_sdpa": _routing_lines()}
        print(json.dumps(out, indent=2))
    else:
        print(f"{spec}  ->  {res.revision} ({res.commit[:12]})  on {system.variant}"
              + ("  [from cache]" if res.offline else ""))
        for d in res.trace:
            mark = "chosen  " if d.variant == res.variant else ("ok      " if d.accepted else "rejected")
            print(f"  {mark} {d.variant}" + (f": {d.reason}" if d.reason else ""))
        for line in _routing_lines():
            print(f"  routed   {line}")
        if res.variant is None:
            print("no variant fits this machine; load() would fall back to sdpa", file=sys.stderr)
    return 0 if res.variant else 1


def _routing_lines() -> list[str]:
    """Shape classes the flash adapter sends to sdpa on purpose on this machine (kernel_loader/routing.py)."""
    from .routing import describe

    return describe()


def cmd_download(args) -> int:
    from .api import load

    if args.lock is not None:
        from .lock import download_locked, read_lock

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


def cmd_doctor(args) -> int:
    from huggingface_hub import constants

    from . import __version__
    from .resolve import cache_dir, hub_endpoint, hub_offline
    from .system import detect
    from .trust import allow_list

    info = {
        "kernel_loader": __version__,
        **detect().as_dict(),
        "cache": cache_dir(),
        "hub_endpoint": hub_endpoint(),
        "offline": hub_offline(),
        "token": "set" if constants.HF_TOKEN_PATH and (os.environ.get("HF_TOKEN") or
                                                         os.path.exists(constants.HF_TOKEN_PATH)) else "none",
        "trust": list(allow_list()) or "Hub trusted-publisher flag only",
        "strict": os.environ.get("KERNEL_LOADER_STRICT", "0"),
        "routed_to_sdpa": _routing_lines() or "none",
    }
    for mod in ("kernels", "huggingface_hub", "transformers", "olah"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception:
            info[mod] = "not installed"
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            if isinstance(v, list) and k == "routed_to_sdpa":  # one route per line
                v = ("\n" + " " * (width + 2)).join(v)
            print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernel-loader",
        description="Resolve, download, verify, build and publish Hub attention kernels.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("resolve", help="show the variant chosen for this machine and why each other was rejected")
    r.add_argument("spec", help="ORG/NAME[@REVISION][:FUNCTION]")
    r.add_argument("--version", type=int, help="kernel version (Hub branch vN); default: newest")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(func=cmd_resolve)

    d = sub.add_parser("download", help="download and verify the variant for this machine into the cache")
    d.add_argument("spec", nargs="?", help="ORG/NAME[@REVISION] (or use --lock)")
    d.add_argument("--version", type=int)
    d.add_argument("--lock", type=Path, help="prefetch what this kernels.lock pins (at the locked commits)")
    d.add_argument("--all-variants", action="store_true", help="with --lock: every locked variant, not just "
                   "this machine's (for bundles and mixed clusters)")
    d.set_defaults(func=cmd_download)

    _add_lock_and_bundle(sub)

    doc = sub.add_parser("doctor", help="torch/CUDA/ABI/arch/OS, cache, offline flag, Hub endpoint, trust")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doctor)

    _add_build_and_hub(sub)

    from .bench_cli import add_bench_arguments

    bn = sub.add_parser("bench", help="model-level benchmark of SPEC against sdpa on this machine (A/B alternated)")
    add_bench_arguments(bn)
    bn.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    from .bench_cli import run_bench

    return run_bench(args)


def cmd_lock(args) -> int:
    from .lock import lock_kernels, project_dependencies, write_lock

    deps = project_dependencies(args.project_dir)
    lock = lock_kernels(deps, variants=args.variant or None)
    out = write_lock(lock, args.output or args.project_dir / "kernels.lock")
    for k in lock.kernels.values():
        print(f"{k.repo_id} {k.ref} -> {k.commit[:12]}: {len(k.variants)} variant(s) "
              f"({', '.join(sorted(k.variants))})")
    print(f"wrote {out} and {out}.digests")
    return 0


def cmd_bundle_export(args) -> int:
    from .bundle import export_bundle, lock_from_args

    out = export_bundle(lock_from_args(args.lock), args.out, variants=args.variant or None)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


def cmd_bundle_import(args) -> int:
    from .bundle import import_bundle
    from .resolve import cache_dir

    result = import_bundle(args.bundle)
    for repo_id, commit, variant in result.kernels:
        print(f"{repo_id} {commit[:12]} {variant}")
    print(f"imported {result.files} verified files ({result.bytes} bytes) into {cache_dir()}")
    return 0


def _add_lock_and_bundle(sub) -> None:
    from pathlib import Path

    lk = sub.add_parser("lock", help="write kernels.lock (+ .digests) for [tool.kernels.dependencies] in "
                        "pyproject.toml")
    lk.add_argument("project_dir", nargs="?", type=Path, default=Path("."), help="folder with pyproject.toml")
    lk.add_argument("--variant", action="append", help="lock only this variant (repeatable; default: all)")
    lk.add_argument("-o", "--output", type=Path, help="lock path (default: PROJECT_DIR/kernels.lock)")
    lk.set_defaults(func=cmd_lock)

    b = sub.add_parser("bundle", help="air-gapped bundles of locked kernels (export from a cache, import into one)")
    bsub = b.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    ex = bsub.add_parser("export", help="write the locked variants from the cache into one tar")
    ex.add_argument("out", type=Path, help="OUT.tar")
    ex.add_argument("--lock", required=True, type=Path, help="kernels.lock (its .digests file is required)")
    ex.add_argument("--variant", action="append", help="only this variant (repeatable; default: all locked)")
    ex.set_defaults(func=cmd_bundle_export)
    im = bsub.add_parser("import", help="verify a bundle and install it into the cache (no Hub needed)")
    im.add_argument("bundle", type=Path)
    im.set_defaults(func=cmd_bundle_import)


def cmd_build(args) -> int:
    from .build import run_build

    return run_build(args)


def cmd_publish(args) -> int:
    from .publish import run_publish

    return run_publish(args)


def cmd_matrix(args) -> int:
    from .matrix_cli import run_matrix

    return run_matrix(args)


def cmd_selftest(args) -> int:
    from .selftest import run_selftest_cli

    return run_selftest_cli(args)


def cmd_hub_serve(args) -> int:
    from .hub import serve_forever

    return serve_forever(args.root, args.port)


def _add_build_and_hub(sub) -> None:
    from pathlib import Path

    from .build import add_build_arguments

    b = sub.add_parser("build", help="compile a kernel repo (build.toml) into build/<variant>/ for this machine")
    add_build_arguments(b)
    b.set_defaults(func=cmd_build)

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
    p.set_defaults(func=cmd_publish)

    from .matrix_cli import add_matrix_arguments

    mx = sub.add_parser("matrix", help="variants per kernel from kernel_repos/matrix.toml (--github, --local, --status)")
    add_matrix_arguments(mx)
    mx.set_defaults(func=cmd_matrix)

    st = sub.add_parser("selftest", help="run a variant on its reference.safetensors (Hub spec or variant folder)")
    st.add_argument("spec", help="ORG/NAME[@REVISION] (loaded like load()) or a local build/<variant>/ folder")
    st.add_argument("--version", type=int)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_selftest)

    h = sub.add_parser("hub", help="the embedded local Hub (olah serving a folder of git repos)")
    hsub = h.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    serve = hsub.add_parser("serve", help="serve --root on 127.0.0.1 until Ctrl-C; prints the HF_ENDPOINT to export")
    serve.add_argument("--root", required=True, type=Path, help="folder with kernels/<org>/<name> git repos")
    serve.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    serve.set_defaults(func=cmd_hub_serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from .fallback import KernelUnavailable

        if isinstance(e, KernelUnavailable):
            print(f"error: {e.reason}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
