"""``kernel-loader selftest SPEC|FOLDER``: run a variant on its reference.safetensors."""

from __future__ import annotations

import json
from pathlib import Path


def add_commands(sub) -> None:
    st = sub.add_parser("selftest", help="run a variant on its reference.safetensors (Hub spec or variant folder)")
    st.add_argument("spec", help="ORG/NAME[@REVISION] (loaded like load()) or a local build/<variant>/ folder")
    st.add_argument("--version", type=int)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run)


def run(args) -> int:
    """0 passed, 1 failed or unavailable."""
    from ..api import load
    from ..importer import folder_device, import_variant
    from ..selftest.check import run_selftest
    from ..variants import device_type

    local = Path(args.spec)
    if (local / "metadata.json").is_file():
        path, module, device = local, import_variant(local), folder_device(local)
    else:
        loaded = load(args.spec, version=args.version, strict=True)
        path, module, device = loaded.path, loaded.module, device_type(loaded.variant)
    report = run_selftest(module, path, device)
    if getattr(args, "json", False):
        print(json.dumps({"variant": report.variant, "device": report.device, "dtype": report.dtype,
                          "tolerance": report.tolerance, "ok": report.ok,
                          "cases": [r.__dict__ for r in report.results]}, indent=2))
    else:
        for r in report.results:
            print(f"  {'ok  ' if r.ok else 'FAIL'} {r.line()}")
        print(report.summary())
    return 0 if report.ok else 1
