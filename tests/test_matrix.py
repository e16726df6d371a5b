"""The build matrix: matrix.toml x build.toml -> variant names the stock kernels client parses; the GitHub
workflow's include list is exactly `kernel-loader matrix --github`; what builds here; the status table."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from tiny_kernels import make_tiny_kernel

from kernel_loader import matrix as m
from kernel_loader.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "build-kernels.yml"

MATRIX = """
[torch]
versions = ["2.13", "2.14"]
stable-abi = ["2.10", "2.11"]

[platform]
archs = ["x86_64", "aarch64"]
runners = { x86_64 = "ubuntu-24.04", aarch64 = "ubuntu-24.04-arm" }

[backend.cpu]
index-url = "https://download.pytorch.org/whl/cpu"

[backend.cuda]
versions = ["12.8", "13.0"]
toolkits = { "12.8" = "12.8.1", "13.0" = "13.0.0" }
index-url = "https://download.pytorch.org/whl/cu{cuda_nodot}"
default-capabilities = ["8.0", "9.0"]
stable-abi = true
"""


def write_kernel(root: Path, name: str = "demo-attn", *, backends=("cpu", "cuda"), caps=("8.0", "9.0a"),
                 extra_general: str = "", cuda_section_extra: str = "") -> Path:
    """A minimal kernel source dir the builder's config reader accepts."""
    d = root / name
    pkg = d / "torch-ext" / name.replace("-", "_")
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("__all__ = ['f']\n\ndef f():\n    return 1\n")
    (d / "torch-ext" / "binding.cpp").write_text("// binding\n")
    (d / "csrc").mkdir()
    (d / "csrc" / "k.cpp").write_text("// cpu\n")
    (d / "csrc" / "k.cu").write_text("// cuda\n")
    sections = ""
    if "cpu" in backends:
        sections += '\n[kernel.k_cpu]\nbackend = "cpu"\ndepends = ["torch"]\nsrc = ["csrc/k.cpp"]\n'
    if "cuda" in backends:
        caps_toml = ", ".join(json.dumps(c) for c in caps)
        sections += (f'\n[kernel.k_cuda]\nbackend = "cuda"\ndepends = ["torch"]\nsrc = ["csrc/k.cu"]\n'
                     f"cuda-capabilities = [{caps_toml}]\n{cuda_section_extra}")
    (d / "build.toml").write_text(textwrap.dedent(f"""\
        [general]
        name = "{name}"
        edition = 5
        version = 1
        license = "MIT"
        backends = {json.dumps(list(backends))}
        {extra_general}
        [torch]
        src = ["torch-ext/binding.cpp"]
        """) + sections)
    return d


@pytest.fixture
def repos(tmp_path):
    root = tmp_path / "kernel_repos"
    root.mkdir()
    (root / "matrix.toml").write_text(MATRIX)
    return root


def expand(root: Path, matrix_text: str | None = None):
    if matrix_text is not None:
        (root / "matrix.toml").write_text(matrix_text)
    matrix = m.load_matrix(root / "matrix.toml")
    return matrix, m.expand(matrix, m.discover_kernels(root), checkout_root=root.parent)


def test_full_expansion_with_names_kernels_parses(repos):
    from kernels.variants import parse_variant

    write_kernel(repos)
    _, entries = expand(repos, MATRIX + '\n[kernel.demo-attn]\nstable-abi = "2.10"\n')
    names = [e.variant for e in entries]
    # 2 torch x (cpu x 2 archs + 2 cuda x 2 archs) + stable 2.10 x 2 cuda x 2 archs
    assert len(names) == len(set(names)) == 2 * (2 + 4) + 4
    for must in ("torch213-cxx11-cpu-x86_64-linux", "torch214-cxx11-cu130-x86_64-linux",
                 "torch213-cxx11-cu128-aarch64-linux", "torch-stable-abi210-cu130-x86_64-linux",
                 "torch-stable-abi210-cu128-aarch64-linux"):
        assert must in names
    assert not any(n.startswith("torch-stable-abi210-cpu") for n in names)  # cpu has no stable-abi = true
    for e in entries:
        assert parse_variant(e.variant).variant_str == e.variant  # round-trips through the stock client
    stable = next(e for e in entries if e.variant == "torch-stable-abi210-cu130-x86_64-linux")
    assert (stable.torch, stable.stable_abi, stable.capabilities) == ("2.14", "2.10", ("8.0", "9.0a"))


def test_github_include_entries(repos):
    write_kernel(repos)
    matrix, entries = expand(repos)
    include = m.github_include(matrix, entries)["include"]
    by_variant = {e["variant"]: e for e in include}
    cu = by_variant["torch214-cxx11-cu130-aarch64-linux"]
    assert cu == {
        "kernel": "demo-attn", "kernel-dir": "kernel_repos/demo-attn", "variant": "torch214-cxx11-cu130-aarch64-linux",
        "backend": "cuda", "arch": "aarch64", "runner": "ubuntu-24.04-arm", "torch": "2.14",
        "torch-index": "https://download.pytorch.org/whl/cu130", "abi": "exact", "stable-abi": "", "cuda": "13.0",
        "cuda-toolkit": "13.0.0", "capabilities": "8.0;9.0a", "cpu-tests": False}
    cpu = by_variant["torch213-cxx11-cpu-x86_64-linux"]
    assert (cpu["cpu-tests"], cpu["cuda"], cpu["torch-index"]) == (True, "", "https://download.pytorch.org/whl/cpu")


def test_kernel_settings_exclude_and_stable_abi_from_build_toml(repos):
    # torch.stable-abi in build.toml opts the kernel in; exclude tables drop matching entries.
    write_kernel(repos, extra_general="").joinpath("build.toml").write_text(
        (repos / "demo-attn" / "build.toml").read_text().replace('[torch]\n', '[torch]\nstable-abi = "2.11"\n'))
    text = MATRIX + '\n[kernel.demo-attn]\nexclude = [{ arch = "aarch64" }, { backend = "cuda", cuda = "12.8" }]\n'
    _, entries = expand(repos, text)
    assert {e.variant for e in entries} == {
        "torch213-cxx11-cpu-x86_64-linux", "torch214-cxx11-cpu-x86_64-linux", "torch-stable-abi211-cu130-x86_64-linux",
        "torch213-cxx11-cu130-x86_64-linux", "torch214-cxx11-cu130-x86_64-linux"}
    assert all(e.capabilities == ("8.0", "9.0a") for e in entries if e.backend == "cuda")


def test_noarch_kernel_is_one_variant_per_backend(repos):
    d = repos / "pure"
    (d / "torch-ext" / "pure").mkdir(parents=True)
    (d / "torch-ext" / "pure" / "__init__.py").write_text("")
    (d / "build.toml").write_text('[general]\nname = "pure"\nedition = 5\nversion = 3\nlicense = "MIT"\n'
                                  'backends = ["cpu", "cuda"]\n\n[torch-noarch]\n')
    matrix, entries = expand(repos)
    assert [e.variant for e in entries] == ["torch-cpu", "torch-cuda"]
    # Nothing to compile: a CPU torch assembles both, with no CUDA toolkit.
    assert all(g["torch-index"].endswith("/cpu") and g["cuda-toolkit"] == ""
               for g in m.github_include(matrix, entries)["include"])


@pytest.mark.parametrize("edit, message", [
    ('[torch]\nversions = ["2.13"]\nstabel-abi = ["2.10"]', r"unknown key torch\.stabel-abi; valid: stable-abi, versions"),
    ('[torch]\nversions = ["2.x"]', r"torch\.versions\[0\] = '2\.x' is not a MAJOR\.MINOR version"),
    ('[torch]\nversions = ["1.13"]', r"torch\.versions has \['1\.13'\]; versions below 2\.0"),
    ('[torch]\nversions = []', r"torch\.versions must be a non-empty list"),
    ('[torch]\nstable-abi = ["2.10"]', r"missing required key torch\.versions"),
    ('[torch]\nversions = ["2.13", "2.13"]', r"lists a version twice"),
])
def test_bad_torch_table(repos, edit, message):
    text = MATRIX.replace('[torch]\nversions = ["2.13", "2.14"]\nstable-abi = ["2.10", "2.11"]', edit)
    with pytest.raises(m.MatrixError, match=message):
        expand(repos, text)


@pytest.mark.parametrize("old, new, message", [
    ('default-capabilities = ["8.0", "9.0"]', 'default-capabilities = ["8.0", "sm_90"]',
     r"backend\.cuda\.default-capabilities\[1\] = 'sm_90' is not a CUDA capability"),
    ('default-capabilities = ["8.0", "9.0"]', 'default-capabilities = ["4.0"]', r"'4\.0' is not a CUDA capability"),
    ('stable-abi = true', 'stable-abi = "yes"', r"backend\.cuda\.stable-abi = 'yes'; expected true or false"),
    ('stable-abi = true', 'stable-abi = true\nnvcc = "13.0"', r"unknown key backend\.cuda\.nvcc"),
    ('toolkits = { "12.8" = "12.8.1", "13.0" = "13.0.0" }', 'toolkits = { "12.6" = "12.6.3" }',
     r"unknown key backend\.cuda\.toolkits\.12\.6"),
    ('archs = ["x86_64", "aarch64"]', 'archs = ["x86_64", "riscv64"]', r"platform\.archs\[1\] = 'riscv64'"),
    ('[backend.cpu]', '[backend.rocm]\n[backend.cpu]', r"unknown key backend\.rocm"),
    ('[platform]', '[platfrom]\n[platform]', r"unknown key platfrom"),
])
def test_bad_matrix_keys(repos, old, new, message):
    assert old in MATRIX
    with pytest.raises(m.MatrixError, match=message):
        expand(repos, MATRIX.replace(old, new, 1))


def test_bad_kernel_settings(repos):
    write_kernel(repos)
    with pytest.raises(m.MatrixError, match=r"kernel\.demo-attn\.stable-abi = '2\.9' is not one of torch\.stable-abi"):
        expand(repos, MATRIX + '\n[kernel.demo-attn]\nstable-abi = "2.9"\n')
    with pytest.raises(m.MatrixError, match=r"unknown key kernel\.demo-attn\.exclude\[0\]\.os"):
        expand(repos, MATRIX + '\n[kernel.demo-attn]\nexclude = [{ os = "windows" }]\n')


def test_bad_capability_in_build_toml_names_the_section(repos):
    write_kernel(repos, caps=("8.0", "ampere"))
    # The builder's reader or ours: either way the file, the key and the value are named.
    with pytest.raises(m.MatrixError, match=r"demo-attn/build\.toml: kernel\.k_cuda\.cuda-capabilities.*'ampere'"):
        expand(repos)


def test_build_toml_problems_name_the_key(repos):
    write_kernel(repos, extra_general='colour = "blue"')
    with pytest.raises(m.MatrixError, match=r"demo-attn/build\.toml.*colour"):
        expand(repos)
    d = repos / "demo-attn"
    d.joinpath("build.toml").write_text(d.joinpath("build.toml").read_text().replace('colour = "blue"', "")
                                        .replace('license = "MIT"\n', ""))
    with pytest.raises(m.MatrixError, match=r"demo-attn/build\.toml.*license"):
        expand(repos)


def _venv(root: Path, name: str, version: str, cuda: str | None) -> Path:
    site = root / name / "lib" / "python3.11" / "site-packages" / "torch"
    site.mkdir(parents=True)
    (site / "version.py").write_text(f"__version__ = '{version}'\ncuda: Optional[str] = {cuda!r}\n")
    (root / name / "bin").mkdir()
    (root / name / "bin" / "python").write_text("")
    return root / name / "bin" / "python"


def test_local_plan_reads_venvs_and_says_why_not(repos, tmp_path):
    write_kernel(repos)
    _, entries = expand(repos, MATRIX + '\n[kernel.demo-attn]\nstable-abi = "2.10"\n')
    checkout = tmp_path
    py213 = _venv(checkout, ".venv", "2.13.0+cpu", None)
    py214 = _venv(checkout, ".venv-cu130", "2.14.1+cu130", "13.0")
    envs = m.find_build_envs(checkout)
    assert [(e.torch, e.cuda, e.minor) for e in envs] == [("2.13.0+cpu", None, "2.13"), ("2.14.1+cu130", "13.0", "2.14")]

    plan = {b.entry.variant: b for b in m.local_plan(entries, envs, nvcc="13.0", machine="x86_64")}
    can = {v: b.env.python for v, b in plan.items() if b.env}
    assert can == {
        "torch213-cxx11-cpu-x86_64-linux": py213,
        "torch214-cxx11-cpu-x86_64-linux": py214,
        "torch214-cxx11-cu130-x86_64-linux": py214,
        "torch-stable-abi210-cu130-x86_64-linux": py214,
    }
    assert "needs a aarch64 machine" in plan["torch213-cxx11-cpu-aarch64-linux"].reason
    assert "needs nvcc 12.8 (found: 13.0)" in plan["torch214-cxx11-cu128-x86_64-linux"].reason
    why = plan["torch213-cxx11-cu130-x86_64-linux"].reason
    assert "needs torch 2.13 built for CUDA 13.0" in why and "2.13.0+cpu (.venv)" in why

    no_nvcc = {b.entry.variant: b for b in m.local_plan(entries, envs, nvcc=None, machine="x86_64")}
    assert "no nvcc" in no_nvcc["torch214-cxx11-cu130-x86_64-linux"].reason


def test_cli_lists_variants_for_the_real_repos(capsys):
    assert cli(["matrix", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    kernels = {d.name for d in (REPO / "kernel_repos").iterdir() if (d / "build.toml").is_file()}
    assert set(listed) == {m.read_kernel(REPO / "kernel_repos" / k).name for k in kernels}
    assert "torch213-cxx11-cpu-x86_64-linux" in listed["flash-attn2"]
    assert not any("cpu-aarch64" in v for v in listed["flash-attn2"])  # excluded in matrix.toml


def test_workflow_matrix_is_the_generated_one():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    root = REPO / "kernel_repos"
    matrix = m.load_matrix(root / "matrix.toml")
    expected = m.github_include(matrix, m.expand(matrix, m.discover_kernels(root), checkout_root=REPO))
    got = workflow["jobs"]["build"]["strategy"]["matrix"]
    assert got == expected, ("the workflow's include list drifted from kernel_repos/matrix.toml + build.toml; run "
                             "`kernel-loader matrix --github --update-workflow .github/workflows/build-kernels.yml`")
    steps = workflow["jobs"]["build"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert 'kernel-loader build "${{ matrix.kernel-dir }}" --variant "${{ matrix.variant }}"' in runs
    assert "kernel-loader selftest" in runs and "abi_check" in runs
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)
    publish = workflow["jobs"]["publish"]
    assert publish["needs"] == "build"
    assert "kernel-loader publish" in "\n".join(s.get("run", "") for s in publish["steps"])
    assert "--remote" in "\n".join(s.get("run", "") for s in publish["steps"])


def test_update_workflow_rewrites_only_the_block(tmp_path, repos):
    write_kernel(repos, backends=("cpu",))
    matrix, entries = expand(repos)
    wf = tmp_path / "wf.yml"
    wf.write_text(f"jobs:\n  build:\n    strategy:\n      matrix:\n        {m.WORKFLOW_BEGIN}\n        include: []\n"
                  f"        {m.WORKFLOW_END}\n    steps: []\n")
    include = m.github_include(matrix, entries)
    assert m.update_workflow(wf, include) is True
    assert m.update_workflow(wf, include) is False
    import yaml

    assert yaml.safe_load(wf.read_text())["jobs"]["build"]["strategy"]["matrix"] == include
    with pytest.raises(m.MatrixError, match="no '# BEGIN MATRIX"):
        bad = tmp_path / "bad.yml"
        bad.write_text("jobs: {}\n")
        m.update_workflow(bad, include)


def test_status_table_local_and_hub(local_hub, tiny_kernel, repos, capsys):
    from kernel_loader.publish import publish_local

    d = write_kernel(repos, backends=("cpu",))
    # Two "built" variants in the kernel's build folder: one the matrix wants, one it does not.
    make_tiny_kernel(d, variant="torch213-cxx11-cpu-x86_64-linux", name="demo-attn")
    make_tiny_kernel(d, variant="torch-cpu", name="demo-attn")
    publish_local(d, "acme/demo-attn-status", local_hub.root, 1, variants=["torch213-cxx11-cpu-x86_64-linux"])

    matrix, entries = expand(repos)
    kernels = m.discover_kernels(repos)
    rows = m.status(entries, kernels, hub={"demo-attn": ("acme/demo-attn-status", "v1")})
    by = {r.variant: r for r in rows}
    assert by["torch213-cxx11-cpu-x86_64-linux"].in_matrix and by["torch213-cxx11-cpu-x86_64-linux"].local_bytes > 0
    assert by["torch213-cxx11-cpu-x86_64-linux"].hub_bytes == by["torch213-cxx11-cpu-x86_64-linux"].local_bytes
    assert by["torch214-cxx11-cpu-x86_64-linux"].local_bytes is None  # in the matrix, not built
    assert not by["torch-cpu"].in_matrix and by["torch-cpu"].hub_bytes is None
    # The Hub's metadata.json is read into memory (size bounded, bytes checked against the listed blob id).
    assert m.hub_variants("acme/demo-attn-status", "v1")["torch213-cxx11-cpu-x86_64-linux"][1]["name"] == "demo-attn"
    table = m.format_status(rows, hub=True)
    import re

    assert re.search(r"demo-attn +torch213-cxx11-cpu-x86_64-linux +yes +0\.00 MB +0\.00 MB +1 +any", table), table
    assert table.splitlines()[-1].startswith(f"{len(rows)} variants, 4 in the matrix, 2 built locally, 1 on the Hub")

    assert cli(["matrix", "--root", str(repos), "--status", "--hub", "acme/demo-attn-status"]) == 0
    out = capsys.readouterr().out
    assert "hub" in out.splitlines()[0] and "1 on the Hub" in out
