"""kernel_loader.build: build.toml -> compiled Hub-layout variant that the stock kernels client loads.

The tiny test kernel is written into a tmp dir here, so these tests do not depend on the repo's kernels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from kernel_loader.build import (
    BuildConfigError,
    BuildError,
    build_variant,
    parse_target,
    host_variant,
    load_build_config,
    source_hash,
)
from kernel_loader.cli import main as cli
from kernel_loader.cli.build import add_build_arguments

REPO = Path(__file__).resolve().parents[1]

BUILD_TOML = """\
[general]
name = "{name}"
edition = 5
version = 1
license = "MIT"
backends = ["cpu"]

[torch]
src = ["torch-ext/torch_binding.cpp"]

[kernel.scale_cpu]
backend = "cpu"
depends = ["torch"]
src = ["csrc/scale.cpp", "csrc/scale.h"]
cxx-flags = ["-DSCALE_BIAS={bias}f"]
"""

SCALE_H = """\
#pragma once
#include <ATen/core/Tensor.h>
at::Tensor scale_cpu(const at::Tensor& x, double s);
"""

# SCALE_BIAS comes from the section's cxx-flags only, so a build that dropped them would not compile.
SCALE_CPP = """\
#include "scale.h"
#include <ATen/ops/empty_like.h>
at::Tensor scale_cpu(const at::Tensor& x, double s) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "scale: expected float32, got ", x.scalar_type());
  auto xc = x.contiguous();
  auto out = at::empty_like(xc);
  const float* in = xc.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t n = xc.numel();
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) o[i] = in[i] * static_cast<float>(s) + SCALE_BIAS;
  return out;
}
"""

BINDING = """\
#include <torch/library.h>
#include "csrc/scale.h"
TORCH_LIBRARY({namespace}, m) {{ m.def("scale(Tensor x, float s) -> Tensor"); }}
TORCH_LIBRARY_IMPL({namespace}, CPU, m) {{ m.impl("scale", &scale_cpu); }}
"""

PACKAGE_INIT = """\
import torch

from ._ops import add_op_namespace_prefix, ops


def scale(x: torch.Tensor, s: float) -> torch.Tensor:
    return ops.scale(x, s)


__all__ = ["scale", "add_op_namespace_prefix"]
"""


def write_kernel(root: Path, *, name: str = "tiny-scale", bias: str = "0.0", namespace: str = "TORCH_EXTENSION_NAME",
                 toml: str | None = None) -> Path:
    py = name.replace("-", "_")
    files = {
        "build.toml": toml if toml is not None else BUILD_TOML.format(name=name, bias=bias),
        "csrc/scale.h": SCALE_H,
        "csrc/scale.cpp": SCALE_CPP,
        "torch-ext/torch_binding.cpp": BINDING.format(namespace=namespace),
        f"torch-ext/{py}/__init__.py": PACKAGE_INIT,
        "README.md": "not listed in build.toml\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build with the default output location (<kernel_dir>/build), shared by the read-only checks."""
    kdir = write_kernel(tmp_path_factory.mktemp("kernel"))
    lines: list[str] = []
    result = build_variant(kdir, progress=lines.append)
    return kdir, result, lines


# ---------------------------------------------------------------- compiled builds


@pytest.mark.slow
def test_layout_metadata_and_digest(built):
    from kernels._rust import Backend, Digest, DigestAlgorithm, Metadata

    kdir, b, lines = built
    assert b.variant == host_variant("cpu")
    assert b.path == kdir / "build" / b.variant
    assert b.ops_id == f"_tiny_scale_cpu_{b.source_hash[:10]}"
    assert b.ops == ("scale",)
    lib = f"{b.ops_id}.abi3.so"
    names = {p.relative_to(b.path).as_posix() for p in b.path.rglob("*")}
    assert names == {"__init__.py", "_ops.py", lib, "build-info.json", "metadata.json"}
    assert b.library == b.path / lib and b.library.stat().st_size > 0

    meta = Metadata.read_from_file(b.path / "metadata.json")
    assert str(meta.name) == "tiny-scale" and meta.id == b.ops_id and meta.version == 1 and meta.license == "MIT"
    assert meta.backend.backend_type == Backend.CPU and meta.python_depends == []
    assert meta.provenance is not None and meta.provenance.kernel is None  # tmp dir: not a git checkout
    # Every file but metadata.json is covered, and the digest matches what is on disk.
    assert set(meta.digest.files) == names - {"metadata.json"}
    meta.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, b.path))

    info = json.loads((b.path / "build-info.json").read_text())
    assert info["ops"] == ["scale"] and info["torch"] == torch.__version__ and info["variant"] == b.variant
    assert info["units"]["csrc/scale.cpp"] == ["-DSCALE_BIAS=0.0f"] and info["units"]["torch-ext/torch_binding.cpp"] == []
    assert str(REPO) not in json.dumps(info) and str(kdir) not in json.dumps(info)  # no machine paths

    # Progress: the header, one line per compile/link step, the summary.
    assert lines[0].startswith("building tiny-scale v1 -> " + b.variant)
    assert any("CXX csrc/scale.cpp" in line for line in lines) and any("LINK" in line for line in lines)
    assert lines[-1].startswith(f"built tiny-scale {b.variant}: 1 ops") and lines[-1].endswith(str(b.path))


@pytest.mark.slow
def test_source_tree_untouched_except_build_and_scratch(built):
    kdir, b, _ = built
    top = {p.name for p in kdir.iterdir()}
    assert top == {"build.toml", "csrc", "torch-ext", "README.md", "build", ".build"}
    assert (kdir / ".build" / ".gitignore").read_text().strip().endswith("*")
    assert not list((kdir / "torch-ext").rglob("__pycache__"))
    assert [p.name for p in (kdir / "build").iterdir()] == [b.variant]  # no temp folders left behind


@pytest.mark.slow
def test_stock_kernels_client_loads_and_runs_it(built):
    import kernels
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    kdir, b, _ = built
    module = kernels.get_local_kernel(kdir)  # resolves <kdir>/build/<variant> like a Hub checkout
    assert Path(module.__file__).parent == b.path
    x = torch.randn(4, 33)
    torch.testing.assert_close(module.scale(x, 2.5), x * 2.5, rtol=0, atol=0)
    torch.testing.assert_close(getattr(torch.ops, b.ops_id).scale(x, -1.0), -x, rtol=0, atol=0)
    assert module.add_op_namespace_prefix("scale") == f"{b.ops_id}::scale"
    with pytest.raises(RuntimeError, match="expected float32"):
        module.scale(x.double(), 1.0)
    # Importing must not have added bytecode to the variant (it would break the digest check for others).
    Metadata.read_from_file(b.path / "metadata.json").digest.validate(
        Digest.hash_variant(DigestAlgorithm.SHA256, b.path)
    )


@pytest.mark.slow
def test_different_sources_get_different_namespaces_and_load_side_by_side(built, tmp_path):
    import kernels

    kdir, first, _ = built
    other = write_kernel(tmp_path / "k2", bias="1.0")  # same name, different source
    out = tmp_path / "out"
    second = build_variant(other, out_dir=out, progress=lambda _: None)
    assert second.ops_id != first.ops_id and second.path == out / second.variant
    assert not (other / "build").exists()  # --out given: nothing under the kernel dir but scratch

    a = kernels.get_local_kernel(kdir)
    b = kernels.get_local_kernel(out)
    x = torch.arange(5, dtype=torch.float32)
    torch.testing.assert_close(a.scale(x, 2.0), x * 2.0, rtol=0, atol=0)
    torch.testing.assert_close(b.scale(x, 2.0), x * 2.0 + 1.0, rtol=0, atol=0)
    assert a is not b and a.__name__ == first.ops_id and b.__name__ == second.ops_id


@pytest.mark.slow
def test_rebuild_is_incremental_and_replaces_in_place(tmp_path):
    kdir = write_kernel(tmp_path / "k", bias="3.0")
    out = tmp_path / "out"
    first = build_variant(kdir, out_dir=out, progress=lambda _: None)
    (first.path / "stale.txt").write_text("left by someone")
    lines: list[str] = []
    second = build_variant(kdir, out_dir=out, progress=lines.append)
    assert second.ops_id == first.ops_id and second.path == first.path
    assert not any("CXX" in line for line in lines) and any("up to date" in line for line in lines)
    assert not (second.path / "stale.txt").exists()  # the whole folder is replaced, not merged
    assert sorted(p.name for p in out.iterdir()) == [second.variant]


@pytest.mark.slow
def test_compile_error_leaves_no_variant(tmp_path):
    kdir = write_kernel(tmp_path / "k")
    (kdir / "csrc/scale.cpp").write_text("int broken( {\n")
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=r"compile failed .*csrc/scale\.cpp") as e:
        build_variant(kdir, out_dir=out, jobs=1, progress=lambda _: None)
    assert "error" in str(e.value)  # the compiler's own message is included
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_binding_that_ignores_the_build_namespace_is_refused(tmp_path):
    kdir = write_kernel(tmp_path / "k", namespace="fixed_ns_for_test")
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="registered no ops under namespace '_tiny_scale_cpu_.*TORCH_EXTENSION_NAME"):
        build_variant(kdir, out_dir=out, progress=lambda _: None)
    assert not out.exists() or list(out.iterdir()) == []


# ---------------------------------------------------------------- fast checks: config, variants, hashing


def test_config_reads_supported_keys(tmp_path):
    kdir = write_kernel(tmp_path)
    c = load_build_config(kdir)
    assert (c.name, c.python_name, c.version, c.license, c.backends) == ("tiny-scale", "tiny_scale", 1, "MIT", ("cpu",))
    assert c.torch.src == ("torch-ext/torch_binding.cpp",) and c.torch.pyext == ("py", "pyi")
    (k,) = c.kernels
    assert (k.name, k.backend, k.depends, k.cxx_flags) == ("scale_cpu", "cpu", ("torch",), ("-DSCALE_BIAS=0.0f",))
    assert k.src == ("csrc/scale.cpp", "csrc/scale.h")


def _toml_with(**edits: str) -> str:
    text = BUILD_TOML.format(name="tiny-scale", bias="0.0")
    for old, new in edits.items():
        old = old.replace("__", " ")
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize(
    "toml, pattern",
    [
        # unknown key: kernels' validator names it and the valid ones
        (_toml_with(**{"[torch]": "[torch]\nbogus = 1"}), r"build\.toml: rejected by kernels.*Unknown field bogus.*pyext"),
        (_toml_with(**{'name = "tiny-scale"\n': ""}), r"build\.toml: rejected by kernels.*Missing field name"),
        (_toml_with(**{'backends = ["cpu"]': 'backends = ["gpu"]'}), r"Unknown variant gpu\. Expected one of .*cpu"),
        (_toml_with(**{'backend = "cpu"': 'backend = "tpu"'}), r"Unknown variant tpu"),
        # valid edition-5 keys we do not implement: refused by name
        (_toml_with(**{"[torch]": '[torch]\nstable-abi = "2.x"'}), r"rejected by kernels.*TorchAbi"),
        (_toml_with(**{'cxx-flags = ["-DSCALE_BIAS=0.0f"]': 'cuda-capabilities = ["8.0"]'}),
         r"rejected by kernels.*Unknown field cuda-capabilities"),  # cpu sections have no capabilities
        (_toml_with(**{"edition = 5": 'edition = 5\nkernel-depends = []'}), r"general\.kernel-depends is valid"),
        (_toml_with(**{'backends = ["cpu"]': 'backends = ["cpu", "metal"]'}), r"general\.backends has 'metal'"),
        (_toml_with(**{'depends = ["torch"]': 'depends = ["torch", "cutlass_3_8"]'}), r"only 'torch' is implemented"),
        (_toml_with(**{'license = "MIT"\n': ""}), r"build\.toml: rejected by kernels' build\.toml validator: Missing field license$"),
        (_toml_with(**{'"csrc/scale.cpp"': '"csrc/missing.cpp"'}), r"source 'csrc/missing\.cpp' .* does not exist"),
        (_toml_with(**{'"csrc/scale.cpp"': '"../outside.cpp"'}), r"outside the kernel directory"),
    ],
)
def test_bad_build_toml_gives_clear_error(tmp_path, toml, pattern):
    (tmp_path / "outside.cpp").write_text("")
    kdir = write_kernel(tmp_path / "k", toml=toml)
    with pytest.raises(BuildConfigError, match=pattern) as e:
        load_build_config(kdir)
    assert str(kdir / "build.toml") in str(e.value)
    with pytest.raises(BuildConfigError):  # build_variant fails the same way, before compiling anything
        build_variant(kdir, out_dir=tmp_path / "out", progress=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_missing_build_toml_and_package(tmp_path):
    with pytest.raises(BuildConfigError, match="no build.toml here"):
        load_build_config(tmp_path)
    kdir = write_kernel(tmp_path / "k")
    (kdir / "torch-ext/tiny_scale/__init__.py").unlink()
    (kdir / "torch-ext/tiny_scale").rmdir()
    with pytest.raises(BuildConfigError, match=r"torch-ext/tiny_scale/ is missing"):
        load_build_config(kdir)


def test_variant_requests(tmp_path):
    from kernels.variants import parse_variant, resolve_variant

    host = host_variant("cpu")
    assert host.startswith(f"torch{torch.__version__.split('.')[0]}{torch.__version__.split('.')[1]}-")
    # The name is one the stock client picks on this machine.
    chosen, _ = resolve_variant([parse_variant(host)], "cpu")
    assert chosen is not None and chosen.variant_str == host

    config = load_build_config(write_kernel(tmp_path / "k0"))
    assert parse_target(host, config).kind == "torch"
    with pytest.raises(BuildError, match="is not a variant name"):
        parse_target("banana", config)
    with pytest.raises(BuildError, match=r"backend 'cuda'; .*build\.toml declares general\.backends = \['cpu'\]"):
        parse_target("torch213-cxx11-cu130-x86_64-linux", config)
    with pytest.raises(BuildError, match="for aarch64-linux; this machine builds x86_64-linux only"):
        parse_target("torch213-cxx11-cpu-aarch64-linux", config)
    with pytest.raises(BuildError, match="does not declare torch.stable-abi"):
        parse_target("torch-stable-abi210-cpu-x86_64-linux", config)
    assert parse_target("torch-cpu", config).kind == "noarch"

    kdir = write_kernel(tmp_path / "k")
    with pytest.raises(BuildError, match=r"variant torch299-cxx11-cpu-x86_64-linux needs torch 2\.99, which is "
                       r"not installed in any Python the builder looked at"):
        build_variant(kdir, variant="torch299-cxx11-cpu-x86_64-linux", progress=lambda _: None)
    assert not (kdir / "build").exists()


def test_source_hash_covers_listed_files_and_package_only(tmp_path):
    kdir = write_kernel(tmp_path)
    base = source_hash(load_build_config(kdir))
    (kdir / "README.md").write_text("changed\n")
    (kdir / "torch-ext/tiny_scale/__pycache__").mkdir()
    (kdir / "torch-ext/tiny_scale/__pycache__/x.pyc").write_bytes(b"junk")
    assert source_hash(load_build_config(kdir)) == base
    for rel in ("csrc/scale.h", "torch-ext/tiny_scale/__init__.py", "build.toml"):
        p = kdir / rel
        p.write_text(p.read_text() + "\n// edit\n" if rel.endswith(".h") else p.read_text() + "\n# edit\n")
        new = source_hash(load_build_config(kdir))
        assert new != base, rel
        base = new


def test_cli_helpers_report_errors_with_exit_codes(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--variant", "torch213-cxx11-cpu-x86_64-linux", "--out", "o", "-j", "2"])
    assert (args.kernel_dir, args.variant, args.out, args.jobs, args.verbose) == (
        tmp_path, ["torch213-cxx11-cpu-x86_64-linux"], Path("o"), 2, False)
    # `kernel-loader build`: one exit-code mapping (bad build.toml 2, build error 1) with one "error:" line
    assert cli(["build", str(tmp_path), "--variant", "torch213-cxx11-cpu-x86_64-linux", "--out", "o", "-j", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no build.toml here" in err
    kdir = write_kernel(tmp_path / "k")
    args = parser.parse_args([str(kdir), "--variant", "torch299-cxx11-cpu-x86_64-linux"])
    assert cli(["build", str(kdir), "--variant", "torch299-cxx11-cpu-x86_64-linux"]) == 1
    assert "needs torch 2.99" in capsys.readouterr().err


# ---------------------------------------------------------------- the repo's flash-attn2 kernel


FA2 = REPO / "kernel_repos" / "flash-attn2"


@pytest.mark.slow
@pytest.mark.skipif(not (FA2 / "build.toml").exists(), reason="kernel_repos/flash-attn2 not present")
def test_builds_flash_attn2(tmp_path):
    import kernels
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    out = tmp_path / "out"
    b = build_variant(FA2, out_dir=out, progress=lambda _: None)
    assert b.ops_id.startswith("_flash_attn2_cpu_") and b.ops
    meta = Metadata.read_from_file(b.path / "metadata.json")
    assert str(meta.name) == "flash-attn2" and meta.id == b.ops_id
    meta.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, b.path))

    fa = kernels.get_local_kernel(out)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 64, 2, 32) for _ in range(3))  # (batch, seq, heads, head_dim)
    got = fa.flash_attn_func(q, k, v, causal=True)
    got = got[0] if isinstance(got, tuple) else got
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(got, ref, rtol=2e-4, atol=2e-4)
