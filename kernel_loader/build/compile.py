"""Execute a :class:`BuildPlan` with ninja: one object per source, one shared library.

We write a small ninja file ourselves instead of going through ``torch.utils.cpp_extension.load``: that helper
builds a Python extension module named after the build (not ``<ops_id>.abi3.so``), imports it into the current
process, and its ninja writer is private API that changes between torch releases. Ninja still gives us parallel,
incremental compiles (header dependencies via depfiles) in a build directory that survives between builds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .backends import BuildError, BuildPlan, CompileUnit

_STATUS = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")


def find_tool(name: str, dirs: list, missing: str) -> str:
    """``name`` from the first of ``dirs`` (folders pip packages ship it in: works without a venv's bin/ on PATH)
    that has it, else from PATH; FileNotFoundError(``missing``) when none has it."""
    for d in dirs:
        if (Path(d) / name).is_file():
            return str(Path(d) / name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(missing)
    return found


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def ninja_binary() -> str:
    try:
        import ninja  # the PyPI wheel: its BIN_DIR holds the binary

        dirs = [ninja.BIN_DIR]
    except ImportError:
        dirs = []
    try:
        return find_tool("ninja", dirs, "ninja not found; install it with `pip install ninja`")
    except FileNotFoundError as e:
        raise BuildError(str(e)) from None


def _esc_path(p: str | Path) -> str:
    """Escape a path for a ninja build line ($, space and colon are special there)."""
    return str(p).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _esc_flags(flags: list[str] | tuple[str, ...]) -> str:
    """Quote flags for the shell, then escape $ for ninja."""
    return " ".join(shlex.quote(f) for f in flags).replace("$", "$$")


def object_path(unit: CompileUnit) -> str:
    return f"obj/{unit.src}.o"


def write_ninja_file(plan: BuildPlan, kernel_dir: Path, build_dir: Path) -> Path:
    # __FILE__ (in TORCH_CHECK messages) is written relative to the kernel repo: published binaries carry no
    # build-machine paths. Like the include dirs, it stays out of the plan's flags (build-info.json).
    # torch's headers (asserts in inline code) likewise read 'torch/include/...', not the build venv's path.
    prefixes = {f"{Path(kernel_dir).resolve()}/"}
    prefixes |= {d.split("/site-packages/")[0] + "/site-packages/" for d in plan.system_include_dirs
                 if "/site-packages/" in d}
    relative_files = [f"-fmacro-prefix-map={p}=" for p in sorted(prefixes)]
    includes = [f"-I{d}" for d in plan.include_dirs] + [f"-isystem{d}" for d in plan.system_include_dirs]
    includes += relative_files
    nvcc_includes = [f"-I{d}" for d in plan.include_dirs]
    for flag in relative_files:
        nvcc_includes += ["-Xcompiler", flag]
    for d in plan.system_include_dirs:
        nvcc_includes += ["-isystem", d]
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {shlex.quote(plan.cxx)}",
        f"cflags = {_esc_flags([*plan.cflags, *includes])}",
        f"ldflags = {_esc_flags(plan.ldflags)}",
        "",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $cflags $extra_flags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $src",
        "",
    ]
    if any(u.rule == "cuda" for u in plan.units):
        lines += [
            f"nvcc = {shlex.quote(plan.nvcc)}",
            # nvcc wants "-isystem DIR" as two arguments
            f"cuda_flags = {_esc_flags([*plan.cuda_flags, *nvcc_includes])}",
            "",
            "rule cuda",
            "  command = $nvcc --generate-dependencies-with-compile --dependency-output $out.d $cuda_flags "
            "$extra_flags -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = NVCC $src",
            "",
        ]
    lines += [
        "rule link",
        "  command = $cxx $in -o $out $ldflags",
        "  description = LINK $out",
        "",
    ]
    objects = []
    for unit in plan.units:
        obj = object_path(unit)
        objects.append(_esc_path(obj))
        lines.append(f"build {_esc_path(obj)}: {unit.rule} {_esc_path(kernel_dir / unit.src)}")
        lines.append(f"  extra_flags = {_esc_flags(unit.flags)}")
        lines.append(f"  src = {unit.src.replace('$', '$$')}")
    lines.append(f"build {_esc_path(plan.library_name)}: link {' '.join(objects)}")
    lines.append(f"default {_esc_path(plan.library_name)}")
    path = build_dir / "build.ninja"
    text = "\n".join(lines) + "\n"
    # Rewrite only on change so ninja's own bookkeeping (.ninja_log, .ninja_deps) stays meaningful.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def run_ninja(
    plan: BuildPlan,
    kernel_dir: Path,
    build_dir: Path,
    *,
    jobs: int | None = None,
    verbose: bool = False,
    progress: Callable[[str], None] = print,
) -> Path:
    """Compile and link; returns the library path inside ``build_dir``. Raises BuildError with the compiler's output."""
    build_dir.mkdir(parents=True, exist_ok=True)
    write_ninja_file(plan, kernel_dir, build_dir)
    cmd = [ninja_binary(), "-C", str(build_dir)]
    if jobs:
        cmd.append(f"-j{int(jobs)}")
    if verbose:
        cmd.append("-v")
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    tail: deque[str] = deque(maxlen=80)  # compiler output kept for the error message
    steps = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            m = _STATUS.match(line)
            if verbose:
                progress(f"  {line}")
            elif m:
                progress(f"  [{m.group(1)}/{m.group(2)}] {m.group(3)}")
            steps += bool(m)
        rc = proc.wait()
    if rc == 0 and steps == 0:
        progress(f"  {plan.library_name} is up to date (no source or flag changed)")
    if rc != 0:
        failed = [line for line in tail if line.startswith("FAILED:")]
        what = re.sub(r"^\[code=\d+\]\s*", "", failed[0][len("FAILED:"):].strip()) if failed else "ninja"
        raise BuildError(f"compile failed ({what}); compiler output:\n" + "\n".join(tail))
    return build_dir / plan.library_name
