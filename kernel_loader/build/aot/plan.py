"""Build steps of an AOT variant: cubins (cached), the launcher plan, and staging into the variant folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..backends import BuildError, BuildPlan, CompileUnit, _torch_common, compiler, compiler_version
from ..config import BuildConfig
from .config import AotConfig

LAUNCHER = Path(__file__).with_name("launcher.cpp")
RUNTIME = Path(__file__).with_name("runtime.py")
RUNTIME_NAME = "_aot_runtime.py"
TRITON_PYTHON_ENV = "KERNEL_LOADER_TRITON_PYTHON"
MANYLINUX = "manylinux_2_28"  # what the launcher is written to meet (see launcher.cpp's header)
CACHE_DIR = ".build/aot-cubins"


def aot_accepts(target):
    """Torch envs that can build the launcher of ``target``: any CUDA torch at or above the stable-ABI version
    (exact-torch variants: that torch minor). The CUDA version need not match the variant's: the launcher uses
    the driver API only and the cubins do not depend on the CUDA runtime."""
    from packaging.version import Version

    def accepts(env) -> bool:
        if env.cuda is None:
            return False
        if target.kind == "stable-abi":
            return Version(env.minor) >= Version(target.stable_abi)
        return env.minor == target.torch_minor

    return accepts


def _has_triton(python: str) -> str | None:
    try:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as the compile step runs it
        proc = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                              text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def triton_python(candidates=()) -> tuple[str, str]:
    """(interpreter, Triton version) that compiles the cubins: $KERNEL_LOADER_TRITON_PYTHON, else the first of
    ``candidates`` (the build's torch env) and the running Python that imports Triton."""
    explicit = os.environ.get(TRITON_PYTHON_ENV)
    order = [explicit] if explicit else [*candidates, sys.executable]
    for python in order:
        if python and (version := _has_triton(str(python))):
            return str(python), version
    raise BuildError(f"no Python with Triton found to compile the AOT cubins (tried {', '.join(map(str, order))}); "
                     f"set {TRITON_PYTHON_ENV} to an interpreter with triton installed")


def _cache_key(config: BuildConfig, aot: AotConfig, triton_version: str) -> str:
    from ..variant import package_files

    h = hashlib.sha256()
    h.update(f"triton {triton_version}\narchs {aot.archs}\n".encode())
    for p in [*aot.files, Path(__file__).with_name("compile_cubins.py")]:
        h.update(p.read_bytes())
    for rel in package_files(config):
        h.update(rel.as_posix().encode())
        h.update((config.package_dir / rel).read_bytes())
    return h.hexdigest()[:16]


def build_cubins(config: BuildConfig, aot: AotConfig, *, python_candidates=(), jobs: int | None = None,
                 progress=print) -> Path:
    """Compile every (arch, configuration) once per source state; later builds (other variant names) reuse it.
    Returns the folder holding table.json and images.bin."""
    python, version = triton_python(python_candidates)
    cache = config.kernel_dir / CACHE_DIR / _cache_key(config, aot, version)
    if (cache / "table.json").is_file():
        progress(f"  cubins up to date ({cache.name}, Triton {version})")
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
    request = {"package_dir": str(config.package_dir), "spec": str(aot.spec), "tiles": str(aot.tiles),
               "archs": list(aot.archs), "out": str(tmp), "jobs": jobs or min(2, os.cpu_count() or 1)}
    (tmp / "request.json").write_text(json.dumps(request))
    progress(f"  compiling cubins for sm_{', sm_'.join(a.replace('.', '') for a in aot.archs)} with Triton {version}")
    root = Path(__file__).resolve().parents[3]  # the checkout holding kernel_loader, for the worker's import
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)  # set by CPU test setups; the interpreter compiles nothing
    proc = subprocess.run([python, "-m", "kernel_loader.build.aot.compile_cubins", str(tmp / "request.json")],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"AOT cubin compile failed ({python}):\n{proc.stderr.strip()[-4000:]}")
    (tmp / "request.json").unlink()
    progress(f"  {(tmp / 'summary.json').read_text()}")
    (tmp / "summary.json").unlink()
    if cache.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(cache)
    return cache


def plan_aot(config: BuildConfig, target, env, ops_id: str, aot: AotConfig, cubins: Path) -> BuildPlan:
    """The launcher library: launcher.cpp compiled by the host compiler against torch's stable ABI (its C shim),
    no CUDA toolkit, no CUDA runtime, not even torch_cuda (see launcher.cpp)."""
    cxx = compiler()
    # The launcher is compiled from a copy inside the repo's build folder: __FILE__ in its error messages is then
    # relative to the kernel repo (no build-machine paths in the binary).
    src_rel = Path(".build") / "aot-launcher" / "launcher.cpp"
    (config.kernel_dir / src_rel).parent.mkdir(parents=True, exist_ok=True)
    if not (config.kernel_dir / src_rel).exists() or (config.kernel_dir / src_rel).read_bytes() != LAUNCHER.read_bytes():
        shutil.copyfile(LAUNCHER, config.kernel_dir / src_rel)
    cflags, torch_includes, ldflags = _torch_common(env, ops_id)
    cflags += ["-fvisibility=hidden"]
    if target.kind == "stable-abi":
        cflags.append(f"-DTORCH_TARGET_VERSION={target.target_version_define}")
    table = json.loads((cubins / "table.json").read_text())
    runs_on = sorted({c for caps in table["archs"].values() for c in caps}, key=lambda c: tuple(map(int, c.split("."))))
    info = {"compiler": compiler_version(cxx), "aot": {
        "triton": table["triton"], "ptxas_cuda": table["ptxas_cuda"], "cubins": len(table["entries"]),
        "archs": table["archs"], "driver_min": table["driver_min"]}}
    if target.kind == "stable-abi":
        info["torch_target_version"] = target.stable_abi
    return BuildPlan(
        backend="cuda",
        ops_id=ops_id,
        cxx=cxx,
        units=(CompileUnit(src=src_rel.as_posix(), rule="cxx", origin="aot launcher"),),
        cflags=tuple(cflags),
        include_dirs=(str(config.kernel_dir),),
        system_include_dirs=tuple(torch_includes),
        ldflags=tuple(ldflags),
        metadata_backend={"type": "cuda", "archs": runs_on},
        abi_policy={"manylinux": os.environ.get("KERNEL_LOADER_MANYLINUX") or MANYLINUX, "python_abi3": "3.9",
                    "torch_stable_abi": target.kind == "stable-abi"},
        info=info,
    )


def stage(staging: Path, aot: AotConfig, cubins: Path) -> None:
    """Into a staged variant folder (package already copied): drop the files that import Triton, add the cubin
    table and the run-time module."""
    for rel in aot.exclude:
        p = staging / rel
        if p.exists():
            p.unlink()
    dest = staging / "cubins"
    dest.mkdir()
    for name in ("table.json", "images.bin"):
        shutil.copyfile(cubins / name, dest / name)
    shutil.copyfile(RUNTIME, staging / RUNTIME_NAME)


def aot_source_hash(src_hash: str, cubins: Path) -> str:
    """The build's source hash (names the op namespace) extended by the cubins and the launcher source: a
    changed tile, spec or launcher gives a new namespace."""
    h = hashlib.sha256(src_hash.encode())
    h.update(cubins.name.encode())
    h.update(LAUNCHER.read_bytes())
    h.update(RUNTIME.read_bytes())
    return h.hexdigest()
