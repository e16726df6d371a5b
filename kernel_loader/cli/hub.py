"""``kernel-loader hub serve``: the embedded local Hub (olah serving a folder of git repos)."""

from __future__ import annotations

import sys
from pathlib import Path


def add_commands(sub) -> None:
    h = sub.add_parser("hub", help="the embedded local Hub (olah serving a folder of git repos)")
    hsub = h.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    serve = hsub.add_parser("serve", help="serve --root on 127.0.0.1 until Ctrl-C; prints the HF_ENDPOINT to export")
    serve.add_argument("--root", required=True, type=Path, help="folder with kernels/<org>/<name> git repos")
    serve.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    serve.add_argument("--trusted-org", action="append", metavar="ORG",
                       help="answer the stock kernels/transformers publisher-trust check for ORG as trusted "
                            "(repeatable; also read from ROOT/trusted-orgs, one org per line)")
    serve.set_defaults(func=run_serve)


def _announce(hub) -> None:
    from ..hubfront import TRUSTED_ORGS_FILE

    trusted = sorted(hub.front.trusted()) if hub.front is not None else []
    print(f"Serving {hub.root} (olah pid {hub.pid}, log {hub.log_path})", flush=True)
    print(f"trusted kernel publishers: {', '.join(trusted) or 'none'} (--trusted-org ORG, or one org per line in "
          f"{hub.root / TRUSTED_ORGS_FILE})", flush=True)
    print(f"export HF_ENDPOINT={hub.endpoint}", flush=True)


def run_serve(args) -> int:
    from ..hub import serve_forever

    stopped_by_itself = serve_forever(args.root, args.port, on_ready=_announce, trusted_orgs=args.trusted_org or ())
    if stopped_by_itself:
        print(stopped_by_itself, file=sys.stderr)
        return 1
    return 0
