"""Real AOT builds of flash-attn2 (slow): every CUDA variant is Triton cubins per arch + the stable-ABI launcher;
the stable-ABI variant of the [torch-noarch] repos with aot.toml (sliding-window, flash-attn3) likewise.

Needs a CUDA build of torch >= 2.10 (the launcher compiles against its stable-ABI headers; e.g. .venv-cu130) and
a Python with Triton (that venv's own, or $KERNEL_LOADER_TRITON_PYTHON); opted in with
KERNEL_LOADER_TEST_CUDA_BUILD=1 like the other CUDA builds. One cubin compile per (arch, configuration) runs once
per source state; later variants reuse it (.build/aot-cubins/<key>).

Checks: a cubin for every (arch, configuration) the dispatch can pick; each cubin's registers, spills and shared
memory (cuobjdump -res-usage) within the limits of every GPU it runs on; the launcher passes manylinux_2_28 +
abi3 + torch stable ABI; no file of the variant imports triton; the variant size (budget 64 MB); the variant
imports under this CPU-only torch and refuses calls cleanly; the three CUDA names resolve through the stock
kernels client from the local Hub (rejected here: no GPU).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_kernels import FLASH_ATTN2_DIR

CUDA_BUILD = os.environ.get("KERNEL_LOADER_TEST_CUDA_BUILD") == "1"
VARIANTS = ["torch-stable-abi210-cu126-x86_64-linux", "torch-stable-abi210-cu128-x86_64-linux",
            "torch-stable-abi210-cu130-x86_64-linux"]
BUDGET = 64e6

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CUDA_BUILD, reason="set KERNEL_LOADER_TEST_CUDA_BUILD=1 (needs a CUDA torch "
                                                        ">= 2.10 venv with Triton, e.g. .venv-cu130)")]


def _cuda_python() -> str | None:
    from kernel_loader.build.torchenv import candidate_pythons, probe

    for p in candidate_pythons(FLASH_ATTN2_DIR):
        env = probe(p)
        if not isinstance(env, str) and env.cuda is not None:
            return p
    return None


@pytest.fixture(scope="module")
def aot_variants(tmp_path_factory):
    from kernel_loader.build import build_variants

    python = _cuda_python()
    assert python is not None, "no CUDA torch venv found (python -m venv .venv-cu130 && pip install torch==2.14.1)"
    out = tmp_path_factory.mktemp("fa2-aot") / "repo"
    lines: list[str] = []
    results = build_variants(FLASH_ATTN2_DIR, VARIANTS, out_dir=out / "build", progress=lines.append,
                             python=[python])
    assert all(hasattr(r, "library") for r in results), "\n".join(lines)
    print("\n".join(lines[-6:]))
    return out, {r.variant: r for r in results}


def test_every_arch_has_a_cubin_for_every_configuration(aot_variants):
    _, built = aot_variants
    from kernel_loader.build.aot import load_aot_config

    keys = _package_module(built[VARIANTS[-1]].path, "_aot_keys")
    aot = load_aot_config(FLASH_ATTN2_DIR)
    for r in built.values():
        table = json.loads((r.path / "cubins" / "table.json").read_text())
        have = {(e["arch"], e["key"]) for e in table["entries"]}
        want = {(a, k) for a in aot.archs for k in keys.all_keys()}
        assert have == want, sorted(want ^ have)[:5]
        meta = json.loads((r.path / "metadata.json").read_text())
        assert meta["backend"] == {"type": "cuda", "archs": ["8.0", "8.6", "8.7", "8.9", "9.0", "10.0"]}
        assert r.ops == ("driver_version", "launch", "load")


def test_cubin_resources_fit_every_gpu_they_run_on(aot_variants):
    from kernel_loader.build.aot.resources import table_usage

    _, built = aot_variants
    r = built[VARIANTS[-1]]
    table = json.loads((r.path / "cubins" / "table.json").read_text())
    try:
        usage = table_usage(r.path / "cubins")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    problems = [p for u in usage for p in u.problems(table["archs"][u.arch])]
    assert not problems, "\n".join(problems[:20])
    regs = sorted(u.registers for u in usage)
    print(f"{len(usage)} cubins: registers median {regs[len(regs) // 2]}, max {regs[-1]}; no spills")


def test_launcher_abi_and_no_triton_in_the_variant(aot_variants):
    _, built = aot_variants
    for r in built.values():
        info = json.loads((r.path / "build-info.json").read_text())
        assert info["abi_check"]["ok"] and info["abi_check"]["policy"] == {
            "manylinux": "manylinux_2_28", "python_abi3": "3.9", "torch_stable_abi": True}
        assert info["torch_target_version"] == "2.10" and "-DTORCH_TARGET_VERSION=0x020a000000000000" in info["cflags"]
        glibc = json.loads((r.path / "metadata.json").read_text()).get("requires", {}).get("glibc")
        assert glibc is None or tuple(map(int, glibc.split("."))) <= (2, 28)
        for py in r.path.rglob("*.py"):
            assert not re.search(r"^\s*(import triton|from triton)", py.read_text(), re.M), py.name
        assert not (r.path / "_triton_fwd.py").exists()
        print(f"{r.variant}: {r.size_bytes / 1e6:.1f} MB")
        assert r.size_bytes < BUDGET


def _cpu_call_of_a_cuda_variant(folder, dtype: str = "float32") -> str:
    """Import a CUDA-only variant folder in a fresh CPU-only process and call flash_attn_func on CPU tensors: what
    it prints (its devices, and the error the call raised)."""
    code = f"""
import importlib.util, sys, torch
folder = {str(folder)!r}
spec = importlib.util.spec_from_file_location("v_aot", folder + "/__init__.py", submodule_search_locations=[folder])
m = importlib.util.module_from_spec(spec); sys.modules["v_aot"] = m; spec.loader.exec_module(m)
print("devices", m.SUPPORTED["devices"])
q = torch.randn(1, 8, 2, 64, dtype=torch.{dtype})
try:
    m.flash_attn_func(q, q, q)
except ValueError as e:
    print("error", e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_variant_imports_without_a_gpu_and_refuses_calls_cleanly(aot_variants):
    _, built = aot_variants
    out = _cpu_call_of_a_cuda_variant(built[VARIANTS[0]].path)
    assert "devices ('cuda',)" in out
    assert "this build runs on cuda tensors" in out


def test_published_aot_variants_resolve_with_the_stock_client(aot_variants, local_hub, session_env_trust):
    import kernels
    from kernels.variants import VariantAccepted

    from kernel_loader.publish import publish_local

    root, _ = aot_variants
    repo = "kernels-community/flash-attn2-aot-test"
    publish_local(root, repo, local_hub.root, 1, allow_dirty=True)
    decisions = kernels.get_kernel_variants(repo, version=1)
    assert set(VARIANTS) <= {d.variant.variant_str for d in decisions}
    assert not [d for d in decisions if isinstance(d, VariantAccepted)]  # no GPU here


def _package_module(folder: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_aot_build_test_{name}", folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NOARCH_CPU_CALL = {  # a CPU call through the variant's public API (the torch path), and what it must print
    "sliding-window": ("q = torch.randn(1, 40, 2, 64)\n"
                       "print('cpu ok', bool(m.sliding_window_attn_func(q, q, q, 16).isfinite().all()))"),
    "paged-attention": ("q = torch.randn(2, 4, 64); kc = torch.randn(6, 16, 2, 64)\n"
                        "bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)\nout = torch.empty_like(q)\n"
                        "m.paged_attention_flash(out, q, kc, kc, bt, torch.tensor([20, 5], dtype=torch.int32), 0.125)\n"
                        "print('cpu ok', bool(out.isfinite().all()), m.backend_for(q))\n"
                        "from importlib import import_module\n"
                        "tbl = import_module(m.__name__ + '._aot_dispatch').table()\n"
                        "print('table', type(tbl).__name__, len(tbl.entries))"),
    "flash-attn3": None,  # CUDA (sm90) only: a CPU call is refused, see NOARCH_REFUSAL
}
NOARCH_REFUSAL = {"flash-attn3": "flash-attn3 runs on CUDA (sm90) tensors only"}


@pytest.mark.parametrize("repo", sorted(NOARCH_CPU_CALL))
def test_noarch_repo_aot_variant(tmp_path, repo):
    """A [torch-noarch] repo with aot.toml: the stable-ABI variant is cubins + launcher, checked like flash-attn2's;
    on this GPU-less machine it imports, serves CPU tensors (torch path) or refuses them by name, and names the
    missing driver. flash-attn3's dense forward cubins carry their TMA descriptors' global scratch."""
    from kernel_loader.build import build_variant
    from kernel_loader.build.aot import load_aot_config
    from kernel_loader.build.aot.resources import table_usage

    python = _cuda_python()
    assert python is not None
    kdir = FLASH_ATTN2_DIR.parent / repo
    aot = load_aot_config(kdir)
    r = build_variant(kdir, out_dir=tmp_path, variant=VARIANTS[-1], python=python, progress=lambda _m: None)
    keys = _package_module(r.path, "_aot_keys")
    table = json.loads((r.path / "cubins" / "table.json").read_text())
    assert {(e["arch"], e["key"]) for e in table["entries"]} == {(a, k) for a in aot.archs for k in keys.all_keys()}
    problems = [p for u in table_usage(r.path / "cubins") for p in u.problems(table["archs"][u.arch])]
    assert not problems, problems[:10]
    info = json.loads((r.path / "build-info.json").read_text())
    assert info["abi_check"]["ok"] and info["abi_check"]["policy"]["manylinux"] == "manylinux_2_28"
    assert not [f for f in aot.exclude if (r.path / f).exists()] and r.size_bytes < BUDGET
    for py in r.path.rglob("*.py"):
        assert not re.search(r"^\s*(import triton|from triton)", py.read_text(), re.M), py.name
    if repo == "flash-attn3":
        meta = json.loads((r.path / "metadata.json").read_text())
        assert meta["backend"] == {"type": "cuda", "archs": ["9.0"]} and r.ops == ("driver_version", "launch", "load")
        scratch = {e["key"]: e.get("global_scratch") for e in table["entries"]}
        assert all((v == [384, 128]) == k.startswith("fwd/dense/") for k, v in scratch.items())
        out = _cpu_call_of_a_cuda_variant(r.path, "float16")
        assert "devices ('cuda',)" in out and NOARCH_REFUSAL[repo] in out
        return
    print(f"{repo} {r.variant}: {len(table['entries'])} cubins, {r.size_bytes / 1e6:.1f} MB")
    code = f"""
import importlib, importlib.util, sys, torch
folder = {str(r.path)!r}
spec = importlib.util.spec_from_file_location("noarch_aot", folder + "/__init__.py",
                                              submodule_search_locations=[folder])
m = importlib.util.module_from_spec(spec); sys.modules["noarch_aot"] = m; spec.loader.exec_module(m)
{NOARCH_CPU_CALL[repo]}
ops = importlib.import_module("noarch_aot._ops").ops
try:
    ops.driver_version(torch.empty(0, dtype=torch.uint8)); print("driver found")
except RuntimeError as e:
    print("driver error", e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpu ok True" in proc.stdout
    assert "driver found" in proc.stdout or "cannot load the CUDA driver library libcuda.so.1" in proc.stdout
    if repo == "paged-attention":
        assert "cpu ok True torch" in proc.stdout and f"table CubinTable {len(table['entries'])}" in proc.stdout


def test_paged_attention_variants_publish_and_resolve_with_the_stock_client(tmp_path, local_hub, session_env_trust):
    """One build of paged-attention gives the noarch variants and the three stable-ABI AOT variants (one cubin
    compile, shared); published to the local Hub they resolve through the stock kernels client: the CPU variant is
    accepted here, the CUDA ones are listed and rejected (no GPU)."""
    import kernels
    from kernels.variants import VariantAccepted

    from kernel_loader.build import build_variants
    from kernel_loader.publish import publish_local

    python = _cuda_python()
    assert python is not None
    root = tmp_path / "repo"
    wanted = VARIANTS + ["torch-cuda", "torch-cpu"]
    results = build_variants(FLASH_ATTN2_DIR.parent / "paged-attention", wanted, out_dir=root / "build",
                             progress=lambda _m: None, python=[python])
    assert {r.variant for r in results if hasattr(r, "library") or r.variant.startswith("torch-c")} == set(wanted)
    repo = "kernels-community/paged-attention-aot-test"
    publish_local(root, repo, local_hub.root, 1, allow_dirty=True)
    decisions = {d.variant.variant_str: d for d in kernels.get_kernel_variants(repo, version=1)}
    assert set(wanted) <= set(decisions)
    accepted = {v for v, d in decisions.items() if isinstance(d, VariantAccepted)}
    assert accepted and accepted <= {"torch-cpu"}, accepted
