"""Compile every (arch, configuration) of a kernel repo's AOT spec to cubins; run in a Python that has Triton.

    python -m kernel_loader.build.aot.compile_cubins REQUEST.json

REQUEST: {"package_dir", "spec", "tiles", "archs", "out", "jobs", optional "only": [[arch, key], ...]}. Writes ``out/images.bin`` (zlib-compressed
cubins back to back) and ``out/table.json`` (see runtime.py), and prints one JSON summary line. A kernel that
builds tensor descriptors on the device (``tl.make_tensor_descriptor``: TMA on sm90+) needs global scratch per
program; its entry says how much (``global_scratch``: [bytes per program, alignment]) and the launcher allocates
it from torch's caching allocator at each launch, as Triton's own launcher does through ``triton.set_allocator``.

The spec module (``spec`` in aot.toml) defines ``configurations(arch, tiles) -> list[dict]``, each dict:
``key`` (configuration name the run-time dispatch asks for), ``kernel`` ("module:function" inside the kernel
package), ``signature`` (param -> Triton type, "constexpr" for constexprs), ``constexprs``, ``divisible`` (params
compiled with tt.divisibility=16: pointers 16-byte aligned, ints multiples of 16; the launcher checks each at run
time), ``num_warps``, ``num_stages``, ``grid`` (per dim: [[int params multiplied], constexpr divisor or null]).
The kernel package is imported as a bare namespace (its ``__init__`` does not run), so only the Triton modules
and what they import are needed here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PKG_ALIAS = "_aot_kernel_src"
PROFILE_SCRATCH_ERROR = ("kernel {name} ({key}, sm_{arch}) needs {size} bytes of profile scratch (an "
                         "instrumented compile); the AOT launcher passes none: compile without instrumentation")


def _alias(package_dir: str) -> str:
    """Import name of a kernel package loaded as a bare namespace (one per folder: two repos' specs may load)."""
    return f"{PKG_ALIAS}_{hashlib.sha1(str(Path(package_dir).resolve()).encode()).hexdigest()[:10]}"


def _import_package(package_dir: str) -> str:
    alias = _alias(package_dir)
    if alias not in sys.modules:
        pkg = types.ModuleType(alias)
        pkg.__path__ = [package_dir]
        sys.modules[alias] = pkg
    return alias


def _load_spec(spec_path: str, package_dir: str):
    alias = _import_package(package_dir)
    spec = importlib.util.spec_from_file_location(f"_aot_spec_{alias}", spec_path)
    mod = importlib.util.module_from_spec(spec)
    mod.__dict__["KERNEL_PACKAGE"] = alias
    spec.loader.exec_module(mod)
    return mod


def _kernel(package_dir: str, ref: str):
    alias = _import_package(package_dir)
    module, fn = ref.split(":")
    return getattr(importlib.import_module(f"{alias}.{module}"), fn)


def _capability(arch: str) -> int:
    major, minor = arch.split(".")
    return int(major) * 10 + int(minor)


def _compile_one(package_dir: str, arch: str, cfg: dict) -> dict:
    os.environ.setdefault("TRITON_DISABLE_LINE_INFO", "1")  # line tables double the cubin; no user needs them
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the interpreter cannot compile cubins; unset it")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(package_dir, cfg["kernel"])
    names = fn.arg_names
    for n in names:
        if n not in cfg["signature"]:
            raise ValueError(f"{cfg['key']}: kernel {cfg['kernel']} parameter {n!r} has no type in the spec")
    signature = {n: cfg["signature"][n] for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in cfg.get("divisible", ())}
    t0 = time.monotonic()
    compiled = triton.compile(ASTSource(fn, signature, cfg["constexprs"], attrs),
                              target=GPUTarget("cuda", _capability(arch), 32),
                              options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    md = compiled.metadata
    if md.profile_scratch_size:
        raise ValueError(PROFILE_SCRATCH_ERROR.format(name=md.name, key=cfg["key"], arch=arch,
                                                      size=md.profile_scratch_size))
    if getattr(md, "num_ctas", 1) != 1 or md.launch_cooperative_grid or md.launch_pdl:
        raise ValueError(f"{cfg['key']}: clusters, cooperative grids and PDL are not supported by the AOT launcher")
    params = []
    divisible = set(cfg.get("divisible", ()))
    for n in names:
        ty = signature[n]
        if ty == "constexpr":
            continue
        if ty not in ("i32", "i64", "fp32") and not ty.startswith("*"):
            raise ValueError(f"{cfg['key']}: parameter {n} has type {ty}; the launcher takes *dtype, i32, i64, fp32")
        params.append([n, ty + (":16" if n in divisible else "")])
    if getattr(md, "tensordesc_meta", None):
        raise ValueError(f"{cfg['key']}: host-side tensor descriptor parameters are not supported by the AOT "
                         f"launcher; build the descriptors in the kernel (tl.make_tensor_descriptor)")
    cubin = compiled.asm["cubin"]
    result = {
        "key": cfg["key"], "arch": arch, "kernel": cfg["kernel"], "name": md.name, "num_warps": md.num_warps,
        "num_stages": cfg["num_stages"], "shared": md.shared, "params": params, "grid": cfg["grid"],
        "constexprs": cfg["constexprs"], "cubin_sha256": hashlib.sha256(cubin).hexdigest(),
        "compile_seconds": round(time.monotonic() - t0, 2), "_cubin": zlib.compress(cubin, 9),
        "cubin_bytes": len(cubin),
    }
    if md.global_scratch_size:  # device-side tensor descriptors: the launcher allocates size x programs bytes
        result["global_scratch"] = [md.global_scratch_size, md.global_scratch_align]
    return result


def _ptxas_cuda() -> str:
    """CUDA version of Triton's bundled ptxas ("12.8"): the driver floor of the cubins it writes."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    out = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else "0.0"


# Triton versions whose launch ABI the launcher matches: the kernel's non-constexpr parameters in order, then two
# scratch pointers (global, profile); checked against third_party/nvidia/backend/driver.py of 3.6, 3.8 and 3.9.
TRITON_RANGE = ((3, 3), (3, 10))


def _check_triton(version: str) -> None:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    low, high = TRITON_RANGE
    if not (low <= parts < high):
        raise SystemExit(f"Triton {version}: the AOT launcher matches the launch ABI of Triton "
                         f"{low[0]}.{low[1]} to <{high[0]}.{high[1]} (trailing scratch pointers); use one of those")


def write_table(out: Path, results: list[dict], runs_on: dict) -> tuple[list[dict], int]:
    """``out/images.bin`` (compressed cubins back to back) and ``out/table.json`` from compile results."""
    import triton

    out.mkdir(parents=True, exist_ok=True)
    offset = 0
    entries = []
    with open(out / "images.bin", "wb") as f:
        for r in results:
            r = dict(r)
            blob = r.pop("_cubin")
            f.write(blob)
            r["offset"], r["size"] = offset, len(blob)
            offset += len(blob)
            entries.append(r)
    ptxas = _ptxas_cuda()
    major = int(ptxas.split(".")[0])
    table = {"format": 1, "triton": triton.__version__, "ptxas_cuda": ptxas, "driver_min": major * 1000,
             "archs": runs_on, "entries": entries}
    (out / "table.json").write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")
    return entries, offset


def main(request_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    import tomllib

    import triton

    _check_triton(triton.__version__)

    tiles = tomllib.loads(Path(req["tiles"]).read_text())
    spec = _load_spec(req["spec"], req["package_dir"])
    work = []
    runs_on = {}
    for arch in req["archs"]:
        runs_on[arch] = list(spec.runs_on(arch)) if hasattr(spec, "runs_on") else [arch]
        for cfg in spec.configurations(arch, tiles):
            work.append((arch, cfg))
    if req.get("only"):  # a subset of (arch, key) pairs: tests and quick experiments
        only = {tuple(p) for p in req["only"]}
        work = [(a, c) for a, c in work if (a, c["key"]) in only]
    keys = [(a, c["key"]) for a, c in work]
    if len(set(keys)) != len(keys):
        raise SystemExit("spec yields one configuration key twice for an arch")
    t0 = time.monotonic()
    jobs = max(1, int(req.get("jobs") or 1))
    if jobs == 1:
        results = [_compile_one(req["package_dir"], a, c) for a, c in work]
    else:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_compile_one, [req["package_dir"]] * len(work), [a for a, _ in work],
                                    [c for _, c in work]))
    out = Path(req["out"])
    entries, size = write_table(out, results, runs_on)
    # The parent reads this summary (and removes it); stdout stays free for Triton's own messages.
    (out / "summary.json").write_text(json.dumps({"cubins": len(entries), "bytes": size,
                                                  "seconds": round(time.monotonic() - t0, 1),
                                                  "triton": triton.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
