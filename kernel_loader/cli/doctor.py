"""``kernel-loader doctor``: torch/CUDA/ABI/arch/OS, cache, offline flag, Hub endpoint, trust, and whether
``kernel_loader.enable()`` can hook the installed transformers (decided by its seams)."""

from __future__ import annotations

import json
import os

from .resolve import routed_lines


def add_commands(sub) -> None:
    doc = sub.add_parser("doctor", help="torch/CUDA/ABI/arch/OS, cache, offline flag, Hub endpoint, trust")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=run)


def run(args) -> int:
    from importlib.metadata import version

    from huggingface_hub import constants

    from .._version import __version__
    from ..cache import cache_dir
    from ..hub_client import hub_endpoint, hub_offline
    from ..system import detect
    from ..trust import allow_list

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
        "routed_to_sdpa": routed_lines() or "none",
    }
    for mod in ("kernels", "huggingface_hub", "transformers", "olah"):
        try:
            info[mod] = version(mod)
        except Exception:
            info[mod] = "not installed"
    info["transformers_hook"] = _hook_state(args.json)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            if isinstance(v, list) and k == "routed_to_sdpa":  # one route per line
                v = ("\n" + " " * (width + 2)).join(v)
            print(f"{k:<{width}}  {v}")
    return 0


def _hook_state(as_json: bool):
    from ..integrations.transformers_seams import status

    state = status(enabled=False)
    if as_json:
        return state.as_dict()
    if state.transformers is None:
        return "unavailable: transformers is not installed"
    head = "available" if state.installable else "unavailable"
    return f"{head} on transformers {state.transformers}: {state.reason}"
