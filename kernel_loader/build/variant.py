"""Variant names, source revisions, and assembling a Hub-layout variant folder.

A variant folder holds the kernel's Python package (from ``torch-ext/<python_name>/``), a generated ``_ops.py``
that loads ``<ops_id>.abi3.so`` from next to itself, the library, ``build-info.json`` (how it was built) and
``metadata.json`` (what kernels reads, with a sha256 digest of every other file). It is assembled in a temp
folder beside the destination and renamed into place, so readers never see a half-written variant.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .backends import BuildError, BuildPlan
from .config import BuildConfig

REV_LEN = 10  # hex chars of the source hash in the op namespace; 40 bits keeps collisions out of reach


# ---------------------------------------------------------------- variant names


def host_variant(backend: str = "cpu") -> str:
    """The exact-torch variant this machine builds for ``backend``, e.g. ``torch213-cxx11-cpu-x86_64-linux``.

    Built from kernels' own variant classes so the name is one the stock client resolves.
    """
    import torch
    from kernels.backends import CPU
    from kernels.variants import Arch, ArchVariant, Torch
    from packaging.version import Version

    if backend != "cpu":
        raise BuildError(f"building the {backend!r} backend is not implemented yet (this builder does cpu)")
    v = Version(torch.__version__)
    system = platform.system().lower()
    abi = torch.compiled_with_cxx11_abi() if system == "linux" else None
    machine = platform.machine()
    if system == "windows" and machine == "AMD64":
        machine = "x86_64"
    framework = Torch(version=Version(f"{v.major}.{v.minor}"), cxx11_abi=abi)
    return ArchVariant(framework=framework, arch=Arch(backend=CPU(), platform=machine, os=system)).variant_str


def check_variant(requested: str, backends: tuple[str, ...]) -> str:
    """Validate a requested variant name against what this machine can build; returns the backend to build."""
    from kernels.variants import ArchVariant, Torch, parse_variant

    try:
        parsed = parse_variant(requested)
    except ValueError as e:
        raise BuildError(f"variant {requested!r} is not a variant name ({e}); example: {host_variant('cpu')}") from None
    if not isinstance(parsed, ArchVariant) or not isinstance(parsed.framework, Torch):
        raise BuildError(
            f"variant {requested!r}: only exact-torch arch variants (torchXY-cxx11-<backend>-<arch>-<os>) are built "
            f"here; noarch, stable-ABI and tvm-ffi variants are not implemented"
        )
    backend = parsed.arch.backend.name
    if backend not in backends:
        raise BuildError(f"variant {requested!r} is for backend {backend!r}; build.toml declares {list(backends)}")
    host = host_variant(backend)
    if requested != host:
        have = parse_variant(host)
        diffs = [
            f"{what} {want} (here: {got})"
            for what, want, got in (
                ("torch", parsed.framework.version, have.framework.version),
                ("C++ ABI cxx11", parsed.framework.cxx11_abi, have.framework.cxx11_abi),
                ("CPU architecture", parsed.arch.platform, have.arch.platform),
                ("OS", parsed.arch.os, have.arch.os),
            )
            if want != got
        ]
        raise BuildError(
            f"variant {requested!r} cannot be built on this machine: it builds {host}; "
            f"the request needs {', '.join(diffs) or 'a different machine'}"
        )
    return backend


def default_backend(config: BuildConfig) -> str:
    from .backends import PLANNERS

    for backend in config.backends:
        if backend in PLANNERS:
            return backend
    raise BuildError(
        f"{config.kernel_dir / 'build.toml'}: declares backends {list(config.backends)}; "
        f"this builder can build {', '.join(PLANNERS)}"
    )


def check_torch_range(config: BuildConfig) -> None:
    import torch
    from packaging.version import Version

    v = Version(torch.__version__)
    running = Version(f"{v.major}.{v.minor}")
    where = config.kernel_dir / "build.toml"
    if config.torch.minver and running < Version(config.torch.minver):
        raise BuildError(f"{where}: torch.minver = {config.torch.minver!r} but the running torch is {torch.__version__}")
    if config.torch.maxver and running > Version(config.torch.maxver):
        raise BuildError(f"{where}: torch.maxver = {config.torch.maxver!r} but the running torch is {torch.__version__}")


# ---------------------------------------------------------------- source revision


def package_files(config: BuildConfig) -> list[Path]:
    """Files of the kernel's Python package that go into the variant (relative to the package dir)."""
    root = config.package_dir
    suffixes = {f".{ext.lstrip('.')}" for ext in config.torch.pyext}
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
            continue
        if rel == Path("_ops.py"):
            continue  # generated per build
        if path.suffix in suffixes:
            out.append(rel)
    return out


def source_hash(config: BuildConfig) -> str:
    """sha256 over build.toml, every file it lists, its include dirs, and the Python package files."""
    root = config.kernel_dir
    files = {Path("build.toml")}
    files.update(Path(p) for p in config.listed_files())
    for inc in config.include_dirs():
        files.update(p.relative_to(root) for p in (root / inc).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    pkg = config.package_dir.relative_to(root)
    files.update(pkg / rel for rel in package_files(config))
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.as_posix().encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def ops_id_for(config: BuildConfig, backend: str, src_hash: str) -> str:
    return f"_{config.python_name}_{backend}_{src_hash[:REV_LEN]}"


def git_status(path: Path) -> dict | None:
    """{"commit", "dirty"} of the git checkout holding ``path`` (dirty = tracked changes under ``path``), or None."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if len(commit) != 40:
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


# ---------------------------------------------------------------- assembling the folder

_OPS_TEMPLATE = '''\
# Generated by kernel_loader's builder; loads this variant's library and names its op namespace.
import os

import torch

_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{library}")
torch.ops.load_library(_LIBRARY)

ops = torch.ops.{ops_id}


def add_op_namespace_prefix(op_name: str) -> str:
    """Prefix op_name with this build's namespace, e.g. for torch.library.register_fake."""
    return f"{ops_id}::{{op_name}}"
'''


def write_ops_py(dest: Path, plan: BuildPlan) -> None:
    (dest / "_ops.py").write_text(_OPS_TEMPLATE.format(library=plan.library_name, ops_id=plan.ops_id))


def copy_package(config: BuildConfig, dest: Path) -> list[str]:
    copied = []
    for rel in package_files(config):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config.package_dir / rel, target)
        copied.append(rel.as_posix())
    if "__init__.py" not in copied:
        raise BuildError(f"{config.package_dir}: no __init__.py; kernels imports the variant through it")
    return copied


def metadata_dict(config: BuildConfig, plan: BuildPlan, provenance: dict) -> dict:
    """metadata.json content except the digest, which ``seal`` adds once every other file is written."""
    meta = {
        "name": config.name,
        "id": plan.ops_id,
        "version": config.version,
        "license": config.license,
        "backend": plan.metadata_backend,
        "python-depends": list(config.python_depends),
    }
    if config.upstream:
        meta["upstream"] = config.upstream
    if config.source:
        meta["source"] = config.source
    meta["provenance"] = provenance
    return meta


def seal(dest: Path, meta_without_digest: dict) -> None:
    """Hash every file, write metadata.json, and check kernels reads it back and the digest validates."""
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    for junk in list(dest.rglob("__pycache__")):
        shutil.rmtree(junk)
    digest = Digest.hash_variant(DigestAlgorithm.SHA256, dest)
    meta = dict(meta_without_digest)
    provenance = meta.pop("provenance")
    meta["digest"] = {"algorithm": "sha256", "files": dict(sorted(digest.files.items()))}
    meta["provenance"] = provenance
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    parsed = Metadata.read_from_file(dest / "metadata.json")
    if parsed.digest is None:
        raise BuildError(f"{dest}/metadata.json: kernels parsed it without a digest")
    parsed.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, dest))


def install_atomically(staging: Path, dest: Path) -> None:
    """Replace ``dest`` with ``staging`` (both in one folder). The old variant is moved aside first, since a
    directory cannot be renamed over a non-empty one; the window without ``dest`` is a single rename."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / dest.name)
    try:
        os.rename(staging, dest)
    except OSError:
        if old is not None:
            os.rename(old / dest.name, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class BuiltVariant:
    """A finished variant folder."""

    path: Path  # <out>/<variant>
    variant: str  # "torch213-cxx11-cpu-x86_64-linux"
    name: str  # kernel name from build.toml
    backend: str
    ops_id: str  # torch.ops namespace and library stem
    library: Path  # path of the .abi3.so inside the folder
    ops: tuple[str, ...]  # op names registered under ops_id
    size_bytes: int  # whole folder
    seconds: float
    source_hash: str

    def summary(self) -> str:
        return (
            f"built {self.name} {self.variant}: {len(self.ops)} ops in {self.ops_id}, "
            f"{self.size_bytes / 1e6:.2f} MB, {self.seconds:.1f} s -> {self.path}"
        )
