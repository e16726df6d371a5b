"""A few real flash-attn2 cubins compiled here (no GPU): launch metadata, parameter tokens, the table format the
run time reads, and the resource check (cuobjdump -res-usage) -- the full set is built by tests/test_aot_build.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from kernel_loader.build.aot import compile_cubins, load_aot_config, resources, runtime  # noqa: E402
from tiny_kernels import FLASH_ATTN2_DIR  # noqa: E402

PKG = str(FLASH_ATTN2_DIR / "torch-ext" / "flash_attn2")
AOT = load_aot_config(FLASH_ATTN2_DIR)
PICK = {("9.0", "fwd/paged/d64/bf16/softcap"), ("8.0", "bwd_delta/varlen/d128/fp16")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The builder's compile step (a fresh process without TRITON_INTERPRET) restricted to two configurations."""
    try:
        compile_cubins._check_triton(triton.__version__)
    except SystemExit as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("cubins") / "variant"
    request = out.parent / "request.json"
    request.write_text(json.dumps({"package_dir": PKG, "spec": str(AOT.spec), "tiles": str(AOT.tiles),
                                   "archs": ["8.0", "9.0"], "out": str(out / runtime.TABLE_DIR), "jobs": 1,
                                   "only": sorted(PICK)}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernel_loader.build.aot.compile_cubins", str(request)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / runtime.TABLE_DIR / "summary.json").read_text())["cubins"] == len(PICK)
    return out


def test_table_holds_launch_metadata_the_runtime_reads(built):
    table = json.loads((built / "cubins" / "table.json").read_text())
    assert table["format"] == runtime.FORMAT and table["triton"] == triton.__version__
    assert table["archs"] == {"8.0": ["8.0", "8.6", "8.7", "8.9"], "9.0": ["9.0"]}
    assert table["driver_min"] >= 12000
    tbl = runtime.CubinTable(built, ops=None)
    fwd = tbl.entries[("9.0", "fwd/paged/d64/bf16/softcap")]
    tile = tomllib.loads(AOT.tiles.read_text())["fwd"]["9.0"]["small"]  # the committed tile table is what ships
    assert fwd.name == "attn_fwd_kernel" and fwd.num_warps == tile["num_warps"] and fwd.shared > 0
    assert (fwd.constexprs["BLOCK_M"], fwd.constexprs["BLOCK_N"]) == (tile["block_m"], tile["block_n"])
    tokens = dict(fwd.params)
    # pointers carry their dtype and the alignment the cubin assumed; lse strides and lengths assume nothing
    assert tokens["Q"] == "*bf16:16" and tokens["LSE"] == "*fp32:16" and tokens["BLOCK_TABLE"] == "*i32:16"
    assert tokens["stride_qm"] == "i32:16" and tokens["stride_lh"] == "i32" and tokens["page_size"] == "i32"
    assert tokens["qk_scale"] == "fp32" and "PAGED" not in tokens and "BLOCK_M" not in tokens
    assert fwd.constexprs["PAGED"] is True and fwd.constexprs["PAGE"] == 0 and fwd.constexprs["SOFTCAP"] is True
    bm = fwd.constexprs["BLOCK_M"]
    assert fwd.grid_of({"seqlen_q_max": 3 * bm + 1, "batch": 2, "n_heads": 8}) == (4, 16, 1)


def test_resources_are_read_and_checked_against_every_gpu_of_the_arch(built):
    try:
        usage = resources.table_usage(built / "cubins")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    table = json.loads((built / "cubins" / "table.json").read_text())
    assert {u.key for u in usage} == {k for _, k in PICK}
    for u in usage:
        assert 0 < u.registers <= resources.MAX_REGS
        assert u.problems(table["archs"][u.arch]) == []
    big = resources.Usage(key="k", arch="8.0", function="f", registers=96, stack=0, local=8, static_shared=0,
                          dynamic_shared=120_000)
    problems = big.problems(["8.0", "8.6"])
    assert any("spills (8 bytes local" in p for p in problems)
    assert any("120000 bytes of shared memory > 101376 on sm_86" in p for p in problems)
    assert not any("on sm_80" in p for p in problems)
