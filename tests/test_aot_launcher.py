"""The AOT launcher library (kernel_loader/build/aot/launcher.cpp) and the run-time table, on a machine without a
GPU or CUDA driver: it must pass the ABI checks (manylinux_2_28, abi3, torch stable ABI), load under a CPU-only
torch, and turn every call it cannot serve into a clear error (no libcuda, bad parameter list, wrong device)."""

from __future__ import annotations

import ctypes.util
import json
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from kernel_loader.build.abicheck import check_library
from kernel_loader.build.aot import plan as aot_plan
from kernel_loader.build.aot import runtime

NS = "_aot_launcher_test"
HAVE_DRIVER = ctypes.util.find_library("cuda") is not None


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    """launcher.cpp compiled as the builder does (stable ABI 2.10, hidden visibility), against this torch."""
    from torch.utils import cpp_extension

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("launcher") / f"{NS}.abi3.so"
    cmd = [cxx, "-O1", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", f"-DTORCH_EXTENSION_NAME={NS}",
           "-DTORCH_TARGET_VERSION=0x020a000000000000",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
           *(f"-isystem{d}" for d in cpp_extension.include_paths()), str(aot_plan.LAUNCHER), "-o", str(out),
           *(f"-L{d}" for d in cpp_extension.library_paths()), "-Wl,--as-needed", "-ltorch_cpu", "-lc10"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.ops.load_library(str(out))
    return out


def test_launcher_passes_manylinux_2_28_abi3_and_stable_abi(launcher):
    report = check_library(launcher, {"manylinux": "manylinux_2_28", "python_abi3": "3.9", "torch_stable_abi": True},
                           variant="torch-stable-abi210-cu130-x86_64-linux")
    assert report.ok
    assert report.glibc_required is None or tuple(map(int, report.glibc_required.split("."))) <= (2, 28)
    syms = subprocess.run(["nm", "-D", "--undefined-only", str(launcher)], capture_output=True, text=True).stdout
    assert "dlsym@GLIBC_2.34" not in syms and "__libc_single_threaded" not in syms
    assert "cuLaunchKernel" not in syms and "cudart" not in syms  # the driver is reached through dlopen only


def test_launcher_registers_its_ops_under_the_build_namespace(launcher):
    ops = getattr(torch.ops, NS)
    assert str(ops.load.default._schema).startswith(f"{NS}::load(Tensor image, str name, str params")
    assert "Tensor(a!)[] tensors" in str(ops.launch.default._schema)


@pytest.mark.skipif(HAVE_DRIVER, reason="this machine has a CUDA driver")
def test_no_driver_is_named_at_the_first_call(launcher):
    ops = getattr(torch.ops, NS)
    with pytest.raises(RuntimeError, match=r"cannot load the CUDA driver library libcuda\.so\.1"):
        ops.driver_version(torch.empty(0, dtype=torch.uint8))


def test_bad_parameter_lists_and_images_are_refused_before_the_driver(launcher):
    ops = getattr(torch.ops, NS)
    image = torch.ones(16, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"unknown parameter token 'f16'"):
        ops.load(image, "k", "*bf16:16,f16", 4, 0, 0)
    with pytest.raises(RuntimeError, match=r"names an unknown pointer dtype"):
        ops.load(image, "k", "*complex", 4, 0, 0)
    with pytest.raises(RuntimeError, match=r"bad specialisation in token 'i32:8'"):
        ops.load(image, "k", "i32:8", 4, 0, 0)
    with pytest.raises(RuntimeError, match=r"non-empty 1-D uint8 CPU tensor"):
        ops.load(torch.ones(4), "k", "i32", 4, 0, 0)
    with pytest.raises(RuntimeError, match=r"num_warps must be in \[1, 32\]"):
        ops.load(image, "k", "i32", 0, 0, 0)


@pytest.mark.skipif(HAVE_DRIVER, reason="this machine has a CUDA driver")
def test_global_scratch_token_is_parsed_before_the_driver(launcher):
    """Kernels with device-side TMA descriptors name their global scratch as a last token; a well-formed one gets
    as far as the driver (missing here), every malformed one is refused first, naming the token."""
    ops = getattr(torch.ops, NS)
    image = torch.ones(16, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"cannot load the CUDA driver library"):
        ops.load(image, "k", "*bf16:16,i32,global_scratch=384/128", 4, 0, 0)
    for bad in ("global_scratch=384", "global_scratch=0/128", "global_scratch=384/96", "global_scratch=x/128",
                "global_scratch=384/128/1", "global_scratch=2147483648/128", "global_scratch=384/8192"):
        with pytest.raises(RuntimeError, match=rf"bad token '{bad}'; want global_scratch=<bytes>/<alignment>"):
            ops.load(image, "k", f"*bf16:16,{bad}", 4, 0, 0)
    with pytest.raises(RuntimeError, match=r"'global_scratch=384/128' must be the last parameter token"):
        ops.load(image, "k", "*bf16:16,global_scratch=384/128,i32", 4, 0, 0)
    with pytest.raises(RuntimeError, match=r"needs global scratch but takes no tensor"):
        ops.load(image, "k", "i32,global_scratch=384/128", 4, 0, 0)


def test_launch_with_cpu_tensors_is_a_clear_dispatch_error(launcher):
    ops = getattr(torch.ops, NS)
    with pytest.raises(NotImplementedError, match=r"CPU"):
        ops.launch(0, 1, 1, 1, [torch.zeros(4)], [], [])


def _table(tmp_path: Path, **extra) -> Path:
    image = zlib.compress(b"\x7fELF not really a cubin")
    root = tmp_path / "variant"
    (root / "cubins").mkdir(parents=True)
    (root / "cubins" / "images.bin").write_bytes(image)
    entry = {"key": "fwd/dense/d64/fp16/nocap", "arch": "9.0", "name": "attn_fwd_kernel", "num_warps": 4,
             "shared": 1024, "params": [["Q", "*fp16:16"], ["n", "i32"], ["batch", "i32"], ["s", "fp32"]],
             "grid": [[["n"], "BLOCK_M"], [["batch", "h"], None]], "constexprs": {"BLOCK_M": 64}, "offset": 0,
             "size": len(image), **extra}
    (root / "cubins" / "table.json").write_text(json.dumps(
        {"format": 1, "triton": "3.6.0", "driver_min": 12000, "archs": {"9.0": ["9.0"]}, "entries": [entry]}))
    return root


def test_table_entries_know_their_grid_and_argument_order(tmp_path):
    tbl = runtime.CubinTable(_table(tmp_path), ops=None)
    (entry,) = tbl.entries.values()
    assert entry.grid_of({"n": 130, "batch": 3, "h": 5}) == (3, 15, 1)
    assert entry._names == (("Q",), ("n", "batch"), ("s",))
    assert entry.global_scratch == (0, 1) and entry.launcher_params == "*fp16:16,i32,i32,fp32"
    assert runtime.table(tmp_path / "nothing-here", ops=None) is None


def test_an_entry_with_global_scratch_asks_the_launcher_for_it(tmp_path):
    """A TMA-descriptor kernel's entry (global_scratch: bytes per program, alignment) reaches the launcher's load
    as a last parameter token; the launch arguments stay the kernel's own."""
    root = _table(tmp_path, global_scratch=[384, 128])
    loads = []

    class Ops:  # records what the table hands the launcher (no driver here to load a cubin into)
        @staticmethod
        def driver_version(_):
            return 13000

        @staticmethod
        def load(image, name, params, num_warps, shared, device):
            loads.append((bytes(image.numpy()), name, params, num_warps, shared, device))
            return 7

    tbl = runtime.CubinTable(root, ops=Ops())
    (entry,) = tbl.entries.values()
    assert entry.global_scratch == (384, 128) and entry._names == (("Q",), ("n", "batch"), ("s",))
    assert tbl.handle(entry, 1) == 7 and tbl.handle(entry, 1) == 7  # loaded once per (kernel, device)
    assert loads == [(b"\x7fELF not really a cubin", "attn_fwd_kernel",
                      "*fp16:16,i32,i32,fp32,global_scratch=384/128", 4, 1024, 1)]


def test_a_gpu_without_cubins_gets_an_error_naming_what_the_build_has(tmp_path, monkeypatch):
    # No GPU here: the device's compute capability is the one fact faked, so the arch check itself runs.
    tbl = runtime.CubinTable(_table(tmp_path), ops=None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    dev = torch.device("cuda", 0)
    assert not tbl.covers(dev)
    with pytest.raises(runtime.NoCubin, match=r"compute capability 8\.6.*has sm_90 \(runs on 9\.0\)"):
        tbl.entry("fwd/dense/d64/fp16/nocap", dev)
    tbl._arch_of_device.clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(runtime.NoCubin, match=r"no precompiled kernel for configuration fwd/dense/d96"):
        tbl.entry("fwd/dense/d96/fp16/nocap", dev)
    assert tbl.entry("fwd/dense/d64/fp16/nocap", dev).name == "attn_fwd_kernel"


def test_a_driver_older_than_the_cubins_is_named(tmp_path):
    class Ops:  # the launcher's driver_version answer is the fault: a driver for CUDA 11.8
        @staticmethod
        def driver_version(_):
            return 11080

    tbl = runtime.CubinTable(_table(tmp_path), ops=Ops())
    with pytest.raises(runtime.NoCubin, match=r"driver supports CUDA 11\.8; these cubins need a driver for CUDA 12\.0"):
        tbl.handle(next(iter(tbl.entries.values())), 0)
