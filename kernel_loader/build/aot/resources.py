"""Resource use of built cubins (``cuobjdump -res-usage``) checked against the limits of every GPU they run on."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..compile import find_tool, package_dir

# Max dynamic shared memory per block (opt-in), bytes, per compute capability (CUDA programming guide, table of
# technical specifications).
SMEM_OPTIN = {"8.0": 166912, "8.6": 101376, "8.7": 166912, "8.9": 101376, "9.0": 232448, "10.0": 232448,
              "10.3": 232448, "12.0": 101376}
MAX_REGS = 255
_FUNC = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass(frozen=True)
class Usage:
    key: str
    arch: str
    function: str
    registers: int
    stack: int  # bytes of stack frame (spilled registers live here)
    local: int  # bytes of local memory (spills)
    static_shared: int
    dynamic_shared: int  # what the launch asks for (table "shared")

    def problems(self, runs_on) -> list[str]:
        out = []
        where = f"{self.key} (sm_{self.arch.replace('.', '')}, {self.function})"
        if self.registers > MAX_REGS:
            out.append(f"{where}: {self.registers} registers > {MAX_REGS}")
        if self.local or self.stack:
            out.append(f"{where}: spills ({self.local} bytes local, {self.stack} bytes stack)")
        for cap in runs_on:
            limit = SMEM_OPTIN.get(cap)
            if limit is not None and self.static_shared + self.dynamic_shared > limit:
                out.append(f"{where}: {self.static_shared + self.dynamic_shared} bytes of shared memory > "
                           f"{limit} on sm_{cap.replace('.', '')}")
        return out


def cuobjdump() -> str:
    """cuobjdump from Triton's package (it ships one), else the CUDA toolkit's."""
    triton = package_dir("triton")
    return find_tool("cuobjdump", [triton / "backends" / "nvidia" / "bin"] if triton else [],
                     "cuobjdump not found (install triton or the CUDA toolkit)")


def table_usage(cubins_dir: Path, tool: str | None = None) -> list[Usage]:
    """Resource use of every entry of a cubin table folder (table.json + images.bin)."""
    tool = tool or cuobjdump()
    table = json.loads((cubins_dir / "table.json").read_text())
    blob = (cubins_dir / "images.bin").read_bytes()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, e in enumerate(table["entries"]):
            path = Path(tmp) / f"{i}.cubin"
            path.write_bytes(zlib.decompress(blob[e["offset"]:e["offset"] + e["size"]]))
            text = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
            m = _FUNC.search(text)
            if m is None or m.group(1) != e["name"]:
                raise ValueError(f"{e['key']} (sm_{e['arch']}): cuobjdump shows no function {e['name']}:\n{text}")
            out.append(Usage(key=e["key"], arch=e["arch"], function=m.group(1), registers=int(m.group(2)),
                             stack=int(m.group(3)), static_shared=int(m.group(4)), local=int(m.group(5)),
                             dynamic_shared=e["shared"]))
    return out
