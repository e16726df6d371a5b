"""CUDA, stable-ABI and noarch variants in kernel_loader.build.

The planning tests need no nvcc and no CUDA torch: they plan against a fake TorchEnv and check the flags, the
-gencode list, the stable-ABI define, variant names and metadata archs. The compile tests need nvcc and the
torch 2.14.1 cu130 headers (a ~5.5 GB venv): they run when both are present and KERNEL_LOADER_TEST_CUDA_BUILD=1.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from kernel_loader.build import (
    BuildConfigError,
    BuildError,
    TorchEnv,
    build_variant,
    load_build_config,
    parse_target,
)
from kernel_loader.build.abicheck import check_library, torch_cxx_symbols
from kernel_loader.build.backends import cuda_archs, gencode_flags, plan_cuda, plan_noarch
from kernel_loader.build.variant import ops_id_for, source_hash

REPO = Path(__file__).resolve().parents[1]
FA2 = REPO / "kernel_repos" / "flash-attn2"

CUDA_TOML = """\
[general]
name = "tiny-cuda"
edition = 5
version = 1
license = "MIT"
backends = ["cpu", "cuda"]

[torch]
src = ["torch-ext/torch_binding.h"]
{torch_extra}

[kernel.k_cuda]
backend = "cuda"
depends = ["torch"]
src = ["csrc/binding_cuda.cpp", "csrc/k.cu"]
cuda-capabilities = {caps}
cuda-flags = ["-lineinfo"]
"""


def write_cuda_kernel(root: Path, caps='["8.0", "9.0"]', torch_extra='stable-abi = "2.10"', toml=None) -> Path:
    files = {
        "build.toml": toml if toml is not None else CUDA_TOML.format(caps=caps, torch_extra=torch_extra),
        "torch-ext/torch_binding.h": "#pragma once\n",
        "csrc/binding_cuda.cpp": "// binding\n",
        "csrc/k.cu": "// kernel\n",
        "torch-ext/tiny_cuda/__init__.py": "from ._ops import ops\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def fake_env(cuda="13.0", version="2.14.1+cu130") -> TorchEnv:
    return TorchEnv(python="/nonexistent/python", torch_version=version, cuda=cuda, cxx11_abi=True,
                    include_dirs=("/torch/include",), library_dirs=("/torch/lib",))


@pytest.fixture
def fake_nvcc(tmp_path, monkeypatch):
    """An nvcc that only answers --version (13.0), plus a CUDA home with cuda_runtime.h: enough to plan."""
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(home))
    return nvcc


def _plan(kdir: Path, variant: str):
    config = load_build_config(kdir)
    target = parse_target(variant, config)
    return config, target, plan_cuda(config, target, fake_env(), ops_id_for(config, "cuda", source_hash(config)))


def test_gencode_from_capabilities():
    assert gencode_flags(("8.0", "9.0")) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    assert gencode_flags(("9.0a",)) == ["-gencode", "arch=compute_90a,code=sm_90a"]
    assert gencode_flags(("10.0+PTX",)) == [
        "-gencode", "arch=compute_100,code=sm_100", "-gencode", "arch=compute_100,code=compute_100"]


def test_exact_cuda_plan(tmp_path, fake_nvcc):
    kdir = write_cuda_kernel(tmp_path)
    config, target, plan = _plan(kdir, "torch214-cxx11-cu130-x86_64-linux")
    assert (target.kind, target.backend, target.torch_minor, target.cuda) == ("torch", "cuda", "2.14", "13.0")
    assert plan.backend == "cuda" and plan.ops_id.startswith("_tiny_cuda_cuda_")
    rules = {u.src: (u.rule, u.flags) for u in plan.units}
    assert rules["csrc/k.cu"] == ("cuda", ("-gencode", "arch=compute_80,code=sm_80",
                                           "-gencode", "arch=compute_90,code=sm_90", "-lineinfo"))
    assert rules["csrc/binding_cuda.cpp"][0] == "cxx"
    assert "torch-ext/torch_binding.h" not in rules  # headers are hashed, not compiled
    assert "-DUSE_CUDA" in plan.cflags and f"-DTORCH_EXTENSION_NAME={plan.ops_id}" in plan.cuda_flags
    assert not any(f.startswith("-DTORCH_TARGET_VERSION") for f in (*plan.cflags, *plan.cuda_flags))
    assert plan.nvcc == str(fake_nvcc)
    assert str(fake_nvcc.parent.parent / "include") in plan.system_include_dirs
    assert "-lcudart" in plan.ldflags
    assert plan.metadata_backend == {"type": "cuda", "archs": ["8.0", "9.0"]}
    assert plan.abi_policy["torch_stable_abi"] is False


def test_stable_abi_plan(tmp_path, fake_nvcc):
    kdir = write_cuda_kernel(tmp_path)
    _, target, plan = _plan(kdir, "torch-stable-abi210-cu130-x86_64-linux")
    assert (target.kind, target.stable_abi) == ("stable-abi", "2.10")
    # MAJOR << 56 | MINOR << 48, as torch/csrc/stable/version.h encodes it
    define = "-DTORCH_TARGET_VERSION=0x020a000000000000"
    assert define in plan.cflags and define in plan.cuda_flags
    assert plan.abi_policy["torch_stable_abi"] is True
    assert plan.info["torch_target_version"] == "2.10"
    assert parse_target("torch-stable-abi211-cu130-x86_64-linux", load_build_config(kdir)).target_version_define \
        == "0x020b000000000000"


def test_stable_abi_target_accepts_newer_torch_of_same_cuda(tmp_path):
    config = load_build_config(write_cuda_kernel(tmp_path))
    t = parse_target("torch-stable-abi210-cu130-x86_64-linux", config)
    assert t.accepts(fake_env()) and t.accepts(fake_env(version="2.10.0+cu130"))
    assert not t.accepts(fake_env(version="2.9.1+cu130"))
    assert not t.accepts(fake_env(cuda="12.8", version="2.14.1+cu128"))
    exact = parse_target("torch214-cxx11-cu130-x86_64-linux", config)
    assert exact.accepts(fake_env()) and not exact.accepts(fake_env(version="2.13.0+cu130"))
    assert not parse_target("torch214-cxx11-cpu-x86_64-linux", config).accepts(fake_env())  # cpu: CPU torch only


def test_nvcc_of_another_cuda_is_refused(tmp_path, fake_nvcc):
    kdir = write_cuda_kernel(tmp_path)
    config = load_build_config(kdir)
    target = parse_target("torch214-cxx11-cu128-x86_64-linux", config)
    with pytest.raises(BuildError, match=r"needs nvcc for CUDA 12\.8; .* is CUDA 13\.0"):
        plan_cuda(config, target, fake_env(cuda="12.8"), "_x")


def test_archs_are_the_capabilities_every_section_has(tmp_path, fake_nvcc):
    toml = CUDA_TOML.format(caps='["8.0", "9.0", "10.0"]', torch_extra="") + textwrap.dedent("""
        [kernel.other]
        backend = "cuda"
        depends = ["torch"]
        src = []
        cuda-capabilities = ["9.0", "10.0"]
        """)
    config = load_build_config(write_cuda_kernel(tmp_path, toml=toml))
    assert cuda_archs(config) == ["9.0", "10.0"]


@pytest.mark.parametrize("cap", ["9.x", "sm_90", "90", "9", "9.0b", ""])
def test_bad_capability_strings_are_named(tmp_path, cap):
    kdir = write_cuda_kernel(tmp_path, caps=json.dumps(["8.0", cap]))
    with pytest.raises(BuildConfigError, match=rf"kernel\.k_cuda\.cuda-capabilities has '{cap}'; write compute "
                                               r"capabilities as MAJOR\.MINOR") as e:
        load_build_config(kdir)
    assert str(kdir / "build.toml") in str(e.value)


def test_bad_cuda_build_toml(tmp_path):
    kdir = write_cuda_kernel(tmp_path / "a", caps="[]")
    with pytest.raises(BuildConfigError, match=r"kernel\.k_cuda compiles \.cu sources but has no cuda-capabilities"):
        load_build_config(kdir)
    kdir = write_cuda_kernel(tmp_path / "b", torch_extra='stable-abi = "2.10"\nbogus = 1')
    with pytest.raises(BuildConfigError, match=r"Unknown field bogus"):
        load_build_config(kdir)
    kdir = write_cuda_kernel(tmp_path / "c", toml=CUDA_TOML.format(caps='["8.0"]', torch_extra="")
                             .replace("cuda-flags", "cuda-minver = \"12.8\"\ncuda-flags"))
    with pytest.raises(BuildConfigError, match=r"kernel\.k_cuda\.cuda-minver is valid kernel-builder keys? but not"):
        load_build_config(kdir)


def test_variant_requests_name_what_is_wrong(tmp_path):
    config = load_build_config(write_cuda_kernel(tmp_path / "k", torch_extra=""))
    with pytest.raises(BuildError, match=r"stable-ABI variant but .*does not declare torch\.stable-abi"):
        parse_target("torch-stable-abi210-cu130-x86_64-linux", config)
    config = load_build_config(write_cuda_kernel(tmp_path / "k2", torch_extra='stable-abi = "2.11"'))
    with pytest.raises(BuildError, match=r"targets stable ABI 2\.10, older than torch\.stable-abi = '2\.11'"):
        parse_target("torch-stable-abi210-cu130-x86_64-linux", config)
    with pytest.raises(BuildError, match=r"backend 'metal' is not built here"):
        parse_target("torch214-metal-aarch64-darwin", config)


def test_missing_torch_names_the_variant_and_what_was_seen(tmp_path, monkeypatch):
    kdir = write_cuda_kernel(tmp_path / "k")
    monkeypatch.setenv("KERNEL_LOADER_BUILD_PYTHONS", "")
    with pytest.raises(BuildError, match=r"variant torch299-cxx11-cu130-x86_64-linux needs torch 2\.99 built for "
                                         r"CUDA 13\.0, which is not installed in any Python") as e:
        build_variant(kdir, variant="torch299-cxx11-cu130-x86_64-linux", progress=lambda _: None)
    assert "torch 2.13" in str(e.value) or "torch 2.1" in str(e.value)  # lists what it found
    with pytest.raises(BuildError, match=r"needs torch 2\.14 built for CUDA 13\.0.*the --python given.*"
                                         r"/nonexistent/python: not an executable"):
        build_variant(kdir, variant="torch214-cxx11-cu130-x86_64-linux", python="/nonexistent/python",
                      progress=lambda _: None)
    assert not (kdir / "build").exists()


def test_noarch_variant_is_package_only(tmp_path):
    """torch-cuda for a Triton-only kernel: no compiler, no library, archs in metadata, digest over every file."""
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    kdir = tmp_path / "k"
    files = {
        "build.toml": textwrap.dedent("""\
            [general]
            name = "tri-only"
            edition = 5
            version = 2
            license = "MIT"
            backends = ["cuda"]

            [torch-noarch]
            cuda_capabilities = ["9.0"]
            """),
        "torch-ext/tri_only/__init__.py": "from ._ops import ops\nfrom .impl import f\n",
        "torch-ext/tri_only/impl.py": "def f(x):\n    return x * 2\n",
    }
    for rel, text in files.items():
        (kdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (kdir / rel).write_text(text)
    b = build_variant(kdir, variant="torch-cuda", out_dir=tmp_path / "out", progress=lambda _: None)
    assert b.variant == "torch-cuda" and b.library is None and b.archs == ("9.0",)
    names = sorted(p.name for p in b.path.iterdir())
    assert names == ["__init__.py", "_ops.py", "build-info.json", "impl.py", "metadata.json"]
    meta = json.loads((b.path / "metadata.json").read_text())
    assert meta["backend"] == {"type": "cuda", "archs": ["9.0"]} and meta["version"] == 2
    assert set(meta["digest"]["files"]) == {"__init__.py", "_ops.py", "build-info.json", "impl.py"}
    Metadata.read_from_file(b.path / "metadata.json").digest.validate(
        Digest.hash_variant(DigestAlgorithm.SHA256, b.path))
    ns: dict = {}
    exec((b.path / "_ops.py").read_text(), ns)
    assert ns["ops"] is None and ns["add_op_namespace_prefix"]("f").endswith("::f")
    # The default variant of a [torch-noarch] kernel is torch-<backend>; compiled variants are refused by name.
    assert build_variant(kdir, out_dir=tmp_path / "out2", progress=lambda _: None).variant == "torch-cuda"
    with pytest.raises(BuildError, match=r"is a \[torch-noarch\] kernel \(nothing to compile\); build torch-cuda"):
        build_variant(kdir, variant="torch214-cxx11-cu130-x86_64-linux", progress=lambda _: None)


def test_noarch_plan_of_a_compiled_kernel_keeps_archs(tmp_path):
    config = load_build_config(write_cuda_kernel(tmp_path))
    plan = plan_noarch(config, parse_target("torch-cuda", config), "_x")
    assert not plan.compiled and plan.metadata_backend == {"type": "cuda", "archs": ["8.0", "9.0"]}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils nm")
def test_stable_abi_check_flags_classic_torch_symbols(built_flash_attn2):
    """The classic (TORCH_LIBRARY, ATen) CPU build imports C++ torch symbols: a stable-ABI claim must fail on it,
    naming the variant and a symbol; the same library passes the checks its real variant makes."""
    lib = built_flash_attn2.library
    assert any(s.startswith("at::") for s in torch_cxx_symbols(lib))
    with pytest.raises(BuildError, match=r"(?s)variant torch-stable-abi210-cpu-x86_64-linux: ABI check failed for "
                                         r".*torch stable ABI: imports C\+\+ symbol (at|c10|torch)::"):
        check_library(lib, {"torch_stable_abi": True}, variant="torch-stable-abi210-cpu-x86_64-linux")
    with pytest.raises(BuildError, match=r"(?s)manylinux_2_17: .* needs GLIBC"):
        check_library(lib, {"manylinux": "manylinux_2_17"}, variant="v")
    report = check_library(lib, {"manylinux": "manylinux_2_28", "python_abi3": "3.9"}, variant="v")
    assert report.ok and report.glibc_required is not None
    info = json.loads((built_flash_attn2.path / "build-info.json").read_text())
    assert info["abi_check"]["ok"] is True and info["abi_check"]["policy"]["manylinux"]
    # whatever the policy, the CPU variant itself needs no glibc newer than torch's own floor (2.28)
    assert tuple(map(int, info["abi_check"]["glibc_required"].split("."))) <= (2, 28), info["abi_check"]


# ---------------------------------------------------------------- real CUDA compiles (opt-in)

CUDA_BUILD = os.environ.get("KERNEL_LOADER_TEST_CUDA_BUILD") == "1"


def _cu130_python() -> str | None:
    from kernel_loader.build.torchenv import candidate_pythons, probe

    for p in candidate_pythons(FA2):
        env = probe(p)
        if not isinstance(env, str) and env.cuda == "13.0" and env.minor == "2.14":
            return p
    return None


needs_cuda_build = pytest.mark.skipif(
    not CUDA_BUILD or shutil.which("nvcc") is None,
    reason="set KERNEL_LOADER_TEST_CUDA_BUILD=1 (needs nvcc 13.0 and a torch 2.14.1 cu130 venv, e.g. .venv-cu130)",
)


@needs_cuda_build
@pytest.mark.slow
def test_three_flash_attn2_variants_build_publish_and_resolve(tmp_path, local_hub, session_env_trust):
    """One call builds the CPU, exact-CUDA and stable-ABI variants of flash-attn2 (each passing the ABI check; the
    CUDA ones are AOT builds: cubins + launcher),
    publishes them as v1 to the local Hub; the stock kernels 0.17.2 client lists all three and picks the CPU one
    here, and the CPU one computes attention."""
    import kernels
    import torch
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    from kernel_loader.build import build_variants
    from kernel_loader.publish import publish_local

    python = _cu130_python()
    assert python is not None, "no torch 2.14 cu130 venv found (python -m venv .venv-cu130 && pip install torch==2.14.1)"
    names = ["torch213-cxx11-cpu-x86_64-linux", "torch214-cxx11-cu130-x86_64-linux",
             "torch-stable-abi210-cu130-x86_64-linux"]
    lines: list[str] = []
    results = build_variants(FA2, names, out_dir=tmp_path / "repo" / "build", progress=lines.append)
    assert [r.variant for r in results] == names and all(hasattr(r, "library") for r in results), lines
    table = lines[-1]
    assert all(n in table for n in names) and "FAILED" not in table
    by = {r.variant: r for r in results}
    for r in results:
        meta = Metadata.read_from_file(r.path / "metadata.json")
        meta.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, r.path))
        info = json.loads((r.path / "build-info.json").read_text())
        assert info["abi_check"]["ok"], info["abi_check"]
    for cuda in names[1:]:  # AOT variants (aot.toml): cubins + the stable-ABI launcher (tests/test_aot_build.py)
        m = json.loads((by[cuda].path / "metadata.json").read_text())
        assert m["backend"] == {"type": "cuda", "archs": ["8.0", "8.6", "8.7", "8.9", "9.0", "10.0"]}
        assert by[cuda].ops == ("driver_version", "launch", "load")
    stable = json.loads((by[names[2]].path / "build-info.json").read_text())
    assert stable["abi_check"]["policy"]["torch_stable_abi"] is True and stable["torch_target_version"] == "2.10"
    assert "-DTORCH_TARGET_VERSION=0x020a000000000000" in stable["cflags"]
    for r in results:  # every variant, the CPU one included, loads on glibc 2.28 (manylinux_2_28)
        glibc = json.loads((r.path / "metadata.json").read_text()).get("requires", {}).get("glibc")
        assert glibc is None or tuple(map(int, glibc.split("."))) <= (2, 28), (r.variant, glibc)

    repo = "kernels-community/flash-attn2-cuda-build-test"
    publish_local(tmp_path / "repo", repo, local_hub.root, 1, allow_dirty=True)  # built from the working tree
    from kernels.variants import VariantAccepted

    decisions = kernels.get_kernel_variants(repo, version=1)  # the stock client's trace, best first
    assert set(names) <= {d.variant.variant_str for d in decisions}
    accepted = [d.variant.variant_str for d in decisions if isinstance(d, VariantAccepted)]
    assert accepted and accepted[0] == names[0], decisions  # no GPU here: the CUDA ones are rejected
    fa = kernels.get_kernel(repo, version=1, trust_remote_code=True)
    assert Path(fa.__file__).parent.name == "torch213-cxx11-cpu-x86_64-linux"
    q, k, v = (torch.randn(1, 70, 2, 64) for _ in range(3))
    out = fa.flash_attn_func(q, k, v, causal=True)
    out = out[0] if isinstance(out, tuple) else out
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4)
