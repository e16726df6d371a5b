"""Publisher side of the demo: build, publish, serve; then run the user side (demo_user.py) against the Hub."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernel_loader.build import build_variant  # noqa: E402
from kernel_loader.hub import start_local_hub  # noqa: E402
from kernel_loader.publish import publish_local  # noqa: E402

REPO = "kernels-community/flash-attn2"


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=ROOT / ".demo", help="Hub root and cache live here")
    ap.add_argument("--keep-cache", action="store_true", help="reuse the download cache (default: start cold)")
    ap.add_argument("--keep-hub", action="store_true",
                    help="publish on top of the previous demo Hub (default: a fresh one, so a kernel whose API "
                         "changed since the last demo is not refused as an unversioned API change)")
    args = ap.parse_args()

    step("1/5 build kernel_repos/flash-attn2 for this machine")
    t = time.perf_counter()
    built = build_variant(ROOT / "kernel_repos" / "flash-attn2", progress=lambda line: print(line, file=sys.stderr))
    print(f"built {built.variant} in {time.perf_counter() - t:.1f}s -> {built.path}")

    step(f"2/5 publish it as {REPO} v1 to the local Hub at {args.work / 'hub'}")
    if not args.keep_hub:
        shutil.rmtree(args.work / "hub", ignore_errors=True)
    # allow_dirty: the demo publishes whatever the checkout holds (the CLI refuses that without --allow-dirty).
    result = publish_local(ROOT / "kernel_repos" / "flash-attn2", REPO, args.work / "hub", 1, allow_dirty=True)
    print(f"{result.branch} -> {result.commit[:12]} ({'new commit' if result.changed else 'unchanged'}); "
          f"variants: {', '.join(result.variants)}")

    step("3/5 serve it (olah on 127.0.0.1, kernels-community marked a trusted publisher)")
    cache = args.work / "cache"
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    # No allow-list: the Hub marks kernels-community a trusted publisher, as huggingface.co does. Nothing else is
    # set either (HF_HUB_DISABLE_TELEMETRY=1 would break the stock `kernels` CLI with huggingface_hub 2.4).
    env = dict(os.environ, HF_HUB_CACHE=str(cache), KERNELS_CACHE=str(cache))
    env.pop("HF_HUB_OFFLINE", None)
    user = [sys.executable, str(ROOT / "scripts" / "demo_user.py")]
    with start_local_hub(args.work / "hub", front=True, trusted_orgs=["kernels-community"]) as hub:
        print(f"export HF_ENDPOINT={hub.endpoint}")
        step("4/5 user process: only environment variables point it at the Hub")
        env["HF_ENDPOINT"] = hub.endpoint
        rc = subprocess.call(user, env=env)
        if rc:
            return rc
    step("5/5 offline: the Hub is stopped, HF_HUB_OFFLINE=1; the model loads the kernel from the cache")
    print(f"Hub at {hub.endpoint} stopped (olah running: {hub.running()})")
    return subprocess.call([*user, "--offline"], env=dict(env, HF_HUB_OFFLINE="1"))


if __name__ == "__main__":
    sys.exit(main())
