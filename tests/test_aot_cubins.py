"""A few real flash-attn2 and flash-attn3 cubins compiled here (no GPU): launch metadata, parameter tokens, the
table format the run time reads, the global scratch of flash-attn3's TMA-descriptor kernel, and the resource check
(cuobjdump -res-usage) -- the full set is built by tests/test_aot_build.py.
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
FA3_DIR = FLASH_ATTN2_DIR.parent / "flash-attn3"
FA3_PICK = {("9.0", "fwd/dense/d128/bf16/nocap"), ("9.0", "fwd/varlen/d96/fp16/softcap")}


def _compile(tmp_path_factory, kernel_dir, archs, pick):
    """The builder's compile step (a fresh process without TRITON_INTERPRET) restricted to a few configurations."""
    try:
        compile_cubins._check_triton(triton.__version__)
    except SystemExit as e:
        pytest.skip(str(e))
    aot = load_aot_config(kernel_dir)
    out = tmp_path_factory.mktemp("cubins") / "variant"
    request = out.parent / "request.json"
    package = kernel_dir / "torch-ext" / kernel_dir.name.replace("-", "_")
    request.write_text(json.dumps({"package_dir": str(package), "spec": str(aot.spec), "tiles": str(aot.tiles),
                                   "archs": archs, "out": str(out / runtime.TABLE_DIR), "jobs": 1,
                                   "only": sorted(pick)}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernel_loader.build.aot.compile_cubins", str(request)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / runtime.TABLE_DIR / "summary.json").read_text())["cubins"] == len(pick)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _compile(tmp_path_factory, FLASH_ATTN2_DIR, ["8.0", "9.0"], PICK)


@pytest.fixture(scope="module")
def built_fa3(tmp_path_factory):
    return _compile(tmp_path_factory, FA3_DIR, ["9.0"], FA3_PICK)


def test_tma_descriptor_kernel_carries_its_global_scratch(built_fa3):
    """flash-attn3's dense forward builds three TMA descriptors (Q, K, V) on the device: Triton's metadata asks for
    128 bytes of global scratch per descriptor and program, 128-byte aligned; no host descriptor parameters. The
    entry records it and the launcher is told; the pointer forward (varlen) needs none. Kernel parameters are the
    same as the pointer kernel's: the descriptors live in the scratch, not in the argument list."""
    table = json.loads((built_fa3 / "cubins" / "table.json").read_text())
    assert table["archs"] == {"9.0": ["9.0"]}
    tbl = runtime.CubinTable(built_fa3, ops=None)
    dense = tbl.entries[("9.0", "fwd/dense/d128/bf16/nocap")]
    varlen = tbl.entries[("9.0", "fwd/varlen/d96/fp16/softcap")]
    assert dense.constexprs["USE_TMA"] is True and varlen.constexprs["USE_TMA"] is False
    assert dense.global_scratch == (3 * 128, 128) and varlen.global_scratch == (0, 1)
    assert dense.launcher_params.endswith(",global_scratch=384/128") and "global_scratch" not in varlen.launcher_params
    assert [n for n, _ in dense.params] == [n for n, _ in varlen.params]
    tile = tomllib.loads(load_aot_config(FA3_DIR).tiles.read_text())["fwd"]["9.0"]["mid"]
    assert tile["tma"] and (dense.constexprs["BLOCK_M"], dense.num_warps) == (tile["block_m"], tile["num_warps"])
    try:
        usage = resources.table_usage(built_fa3 / "cubins")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    for u in usage:
        assert u.problems(["9.0"]) == [], u


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
