"""``kernel-loader resolve SPEC``: the variant chosen for this machine and why every other was rejected."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict


def add_commands(sub) -> None:
    r = sub.add_parser("resolve", help="show the variant chosen for this machine and why each other was rejected")
    r.add_argument("spec", help="ORG/NAME[@REVISION][:FUNCTION]")
    r.add_argument("--version", type=int, help="kernel version (Hub branch vN); default: newest")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(func=run)


def run(args) -> int:
    from ..errors import KernelUnavailable
    from ..hub_client import hub_offline
    from ..resolve import resolve
    from ..spec import parse_spec
    from ..system import detect
    from ..trust import check_trust

    spec = parse_spec(args.spec, version=args.version)
    try:
        # Even a dry resolve reads the publisher's listings and (on a GPU) metadata.json: trust first.
        check_trust(spec, offline=hub_offline())
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
               "decisions": [asdict(d) for d in res.trace], "routed_to_sdpa": routed_lines()}
        print(json.dumps(out, indent=2))
    else:
        print(f"{spec}  ->  {res.revision} ({res.commit[:12]})  on {system.variant}"
              + ("  [from cache]" if res.offline else ""))
        for d in res.trace:
            mark = "chosen  " if d.variant == res.variant else ("ok      " if d.accepted else "rejected")
            print(f"  {mark} {d.variant}" + (f": {d.reason}" if d.reason else ""))
        for line in routed_lines():
            print(f"  routed   {line}")
        if res.variant is None:
            print("no variant fits this machine; load() would fall back to sdpa", file=sys.stderr)
    return 0 if res.variant else 1


def routed_lines() -> list[str]:
    """Shape classes the flash adapter sends to sdpa on purpose on this machine (kernel_loader/adapters/routing.py)."""
    from ..adapters.routing import describe

    return describe()
