"""Record the op schemas a built library registers, for build-info.json ``op_schemas``.

Publishing compares them with what a version branch already has (a changed schema is an API change, which
needs a new version; see ``kernel_loader.publish``). They are read at build time, in a fresh interpreter of
the torch the library was built against, because a published CUDA or other-torch variant cannot be loaded
by the publishing process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import json, sys, torch
torch.ops.load_library(sys.argv[1])
ns = sys.argv[2] + "::"
out = {}
for name in sorted({n for n in torch._C._dispatch_get_all_op_names() if n.startswith(ns)}):
    for s in torch._C._jit_get_schemas_for_operator(name):
        key = name[len(ns):] + ("." + s.overload_name if s.overload_name else "")
        out[key] = str(s)
print(json.dumps(out))
"""


def record_op_schemas(library: Path, ops_id: str, python: str | Path | None = None) -> dict[str, str]:
    """``{"fwd": "<ops_id>::fwd(Tensor q, ...) -> (Tensor out, Tensor lse)", ...}``; {} when they cannot be
    read (the build's own load probe reports load failures; schemas are an addition, not a gate)."""
    proc = subprocess.run([str(python or sys.executable), "-c", _SCRIPT, str(library), ops_id],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
