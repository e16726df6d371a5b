"""Quick check of tiles.toml without a full build: compile the heaviest configuration of each (kernel, head dim,
arch) -- paged + softcap forward, dense + softcap forward (the TMA kernel where a tile says tma), varlen + softcap
backward -- and print registers, spills and shared memory. flash-attn3's aot/check_tiles.py links here; the repo
is the one the script is called from.

    KERNEL_LOADER_TRITON_PYTHON=<python with triton> python kernel_repos/flash-attn2/aot/check_tiles.py [ARCH ...]
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).absolute().parent  # not resolved: flash-attn3's link names flash-attn3's aot/
REPO = HERE.parents[2]
PACKAGE = HERE.parent / "torch-ext" / HERE.parent.name.replace("-", "_")
sys.path.insert(0, str(REPO))

from kernel_loader.build.aot import load_aot_config  # noqa: E402
from kernel_loader.build.aot.resources import table_usage  # noqa: E402


def main(archs):
    aot = load_aot_config(HERE.parent)
    archs = archs or list(aot.archs)
    only = []
    for arch in archs:
        for d in (64, 96, 128, 256):
            only += [[arch, f"fwd/paged/d{d}/bf16/softcap"], [arch, f"fwd/varlen/d{d}/bf16/nocap"],
                     [arch, f"fwd/dense/d{d}/bf16/softcap"], [arch, f"fwd_short/paged/d{d}/bf16/softcap"],
                     [arch, f"fwd_short/dense/d{d}/bf16/softcap"], [arch, f"fwd_short/varlen/d{d}/bf16/softcap"],
                     [arch, f"bwd_dkdv/varlen/d{d}/bf16/softcap"], [arch, f"bwd_dq/varlen/d{d}/bf16/softcap"]]
    pick = os.environ.get("CHECK_TILES_ONLY")  # substring filter on the key, e.g. "bwd_dkdv"
    if pick:
        only = [o for o in only if any(p in f"{o[0]}:{o[1]}" for p in pick.split(","))]
    python = os.environ.get("KERNEL_LOADER_TRITON_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "req.json"
        req.write_text(json.dumps({"package_dir": str(PACKAGE), "spec": str(aot.spec),
                                   "tiles": str(aot.tiles), "archs": archs, "out": f"{tmp}/cubins", "jobs": 2,
                                   "only": only}))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = str(REPO)
        subprocess.run([python, "-m", "kernel_loader.build.aot.compile_cubins", str(req)], check=True, env=env)
        table = json.loads((Path(tmp) / "cubins" / "table.json").read_text())
        bad = 0
        for u in table_usage(Path(tmp) / "cubins"):
            problems = u.problems(table["archs"][u.arch])
            bad += bool(problems)
            print(f"{'BAD ' if problems else 'ok  '}sm_{u.arch.replace('.', '')} {u.key:<36} regs {u.registers:>3} "
                  f"stack {u.stack:>4} smem {u.dynamic_shared:>6}  {'; '.join(problems)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
