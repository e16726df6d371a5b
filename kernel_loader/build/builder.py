"""``build_variant``: kernel source dir -> ``<out>/<variant>/`` in the Hub layout kernels loads.

Steps: read build.toml -> parse the requested variant (targets.py) -> find a Python whose torch fits it
(torchenv.py; may be another venv) -> hash the sources (the hash names the op namespace) -> plan (per backend) ->
ninja in ``<kernel_dir>/.build/<variant>/`` -> load the library in a fresh process of that Python and list its
ops -> ABI check (abicheck.py) -> assemble package, _ops.py, library, build-info.json, metadata.json in a temp
folder -> rename into place. ``build_variants`` runs several with progress lines and a summary table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .abicheck import AbiReport, check_library
from .aot import aot_accepts, build_cubins, load_aot_config, plan_aot
from .aot import stage as stage_aot_files
from .aot.plan import aot_source_hash
from .backends import PLANNERS, BuildError, BuildPlan, plan_noarch
from .compile import run_ninja
from .config import BuildConfig, BuildConfigError, load_build_config
from .targets import Target, parse_target, variant_name
from .torchenv import find_env, running_env
from .variant import (
    BuiltVariant,
    check_torch_range,
    copy_package,
    git_status,
    install_atomically,
    metadata_dict,
    ops_id_for,
    seal,
    source_hash,
    write_ops_py,
)

BUILD_DIR_NAME = ".build"


_logger = logging.getLogger("kernel_loader.build")


def _stderr(msg: str) -> None:
    # Library callers get progress as log records; `kernel-loader build` passes a progress sink that prints.
    _logger.info(msg)


def builder_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"kernel-loader {version('kernel-loader')}"
    except PackageNotFoundError:
        return "kernel-loader (source checkout)"


def build_variant(
    kernel_dir: Path,
    *,
    out_dir: Path | None = None,
    variant: str | None = None,
    jobs: int | None = None,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
    python: str | Path | Sequence[str | Path] | None = None,
) -> BuiltVariant:
    """Build one variant of ``kernel_dir`` into ``<out_dir or kernel_dir/build>/<variant>/``.

    ``variant``: any name :func:`~.targets.parse_target` accepts (exact torch, stable ABI, noarch ``torch-cuda``);
    default: the exact-torch variant of the running torch for the first compiled backend (``torch-<backend>``
    for a ``[torch-noarch]`` kernel). ``python``: interpreter(s) whose torch to compile against (default: found,
    see ``torchenv``). ``jobs``: parallel compiles. ``progress``: step-line sink (stderr by default).
    Raises BuildConfigError for build.toml problems and BuildError for everything after.
    """
    log = progress or _stderr
    start = time.monotonic()
    config = load_build_config(Path(kernel_dir))
    # A repo with aot.toml ships its CUDA kernels as precompiled Triton cubins + a stable-ABI launcher (see aot/);
    # a [torch-noarch] (Triton-only) repo gets those variants besides its noarch ones, at aot.toml's stable-abi.
    aot_repo = load_aot_config(config.kernel_dir) if "cuda" in config.backends else None
    if aot_repo is not None and config.noarch and aot_repo.stable_abi:
        config = dataclasses.replace(config, torch=dataclasses.replace(config.torch, stable_abi=aot_repo.stable_abi))
    target = parse_target(variant, config) if variant else default_target(config)
    explicit = _pythons(python)
    env = None
    aot_config = aot_repo if target.compiled and target.backend == "cuda" else None
    if target.compiled:
        if config.noarch and aot_config is None:
            raise BuildError(f"variant {target.variant}: {config.kernel_dir / 'build.toml'} is a [torch-noarch] "
                             f"kernel (nothing to compile); build torch-{target.backend} instead")
        env = find_env(config.kernel_dir, aot_accepts(target) if aot_config else target.accepts, target.needs(),
                       explicit)
        check_torch_range(config, env, target)
    src_hash = source_hash(config)
    stage_aot = None
    if aot_config is not None:
        cubins = build_cubins(config, aot_config, python_candidates=(env.python,), jobs=jobs, progress=log)
        src_hash = aot_source_hash(src_hash, cubins)
        ops_id = ops_id_for(config, target.backend, src_hash)
        plan = plan_aot(config, target, env, ops_id, aot_config, cubins)
        stage_aot = functools.partial(stage_aot_files, aot=aot_config, cubins=cubins)
    else:
        ops_id = ops_id_for(config, target.backend, src_hash)
        plan = PLANNERS[target.backend](config, target, env, ops_id) if target.compiled else plan_noarch(config, target, ops_id)
    via = f" against torch {env.torch_version} ({env.python})" if env is not None else " (package only)"
    log(f"building {config.name} v{config.version} -> {target.variant}{via}, ops namespace {plan.ops_id}")

    out_root = Path(out_dir).resolve() if out_dir is not None else config.kernel_dir / "build"
    library, ops, abi = None, [], None
    build_dir = _build_dir(config.kernel_dir) / target.variant
    with _locked(build_dir.parent / f"{target.variant}.lock"):
        if plan.compiled:
            library = run_ninja(plan, config.kernel_dir, build_dir, jobs=jobs, verbose=verbose, progress=log)
            log("  checking the library loads and registers its ops")
            ops = probe_ops(library, plan.ops_id, python=env.python)
            log(f"  ABI check ({', '.join(f'{k}={v}' for k, v in plan.abi_policy.items())})")
            abi = check_library(library, plan.abi_policy, variant=target.variant)
        log(f"  assembling {out_root / target.variant}")
        dest = _assemble(config, plan, library, ops, src_hash, target.variant, out_root, env=env, abi=abi,
                         target=target, stage=stage_aot)

    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    built = BuiltVariant(
        path=dest,
        variant=target.variant,
        name=config.name,
        backend=target.backend,
        ops_id=plan.ops_id,
        library=dest / plan.library_name if plan.compiled else None,
        ops=tuple(ops),
        size_bytes=size,
        seconds=time.monotonic() - start,
        source_hash=src_hash,
        torch=env.torch_version if env is not None else None,
        archs=tuple(plan.metadata_backend.get("archs", ())),
        glibc=abi.glibc_required if abi is not None else None,
    )
    log(built.summary())
    return built


def _pythons(python) -> tuple[str, ...]:
    if python is None:
        return ()
    if isinstance(python, (str, Path)):
        return (str(python),)
    return tuple(str(p) for p in python)


def default_target(config: BuildConfig) -> Target:
    """The running torch's exact variant for the first compiled backend build.toml declares (noarch kernels:
    ``torch-<first backend>``)."""
    if config.noarch:
        return Target(variant=variant_name("noarch", config.backends[0]), kind="noarch", backend=config.backends[0])
    env = running_env()
    for backend in config.backends:
        if backend == "cpu":
            return parse_target(variant_name("torch", "cpu", torch_minor=env.minor, cxx11_abi=env.cxx11_abi), config)
        if backend == "cuda" and env.cuda:
            name = variant_name("torch", "cuda", torch_minor=env.minor, cuda=env.cuda, cxx11_abi=env.cxx11_abi)
            return parse_target(name, config)
    raise BuildError(
        f"{config.kernel_dir / 'build.toml'}: declares backends {list(config.backends)} but the running torch "
        f"({env.torch_version}) builds none of them; name a variant with --variant"
    )


def local_targets(config: BuildConfig, python: Sequence[str] = ()) -> list[Target]:
    """Every variant this machine can build: per backend, the exact-torch variant of each torch found (CUDA: of
    the nvcc's CUDA) and, when build.toml declares torch.stable-abi, that stable-ABI variant; noarch kernels:
    ``torch-<backend>`` per backend."""
    if config.noarch:
        return [Target(variant=variant_name("noarch", b), kind="noarch", backend=b) for b in config.backends]
    from .backends import nvcc_path, nvcc_version
    from .torchenv import candidate_pythons, probe

    envs = [e for e in (probe(p) for p in candidate_pythons(config.kernel_dir, tuple(python))) if not isinstance(e, str)]
    try:
        nvcc_cuda = nvcc_version(nvcc_path())
    except BuildError:
        nvcc_cuda = None
    names: list[str] = []
    for backend in config.backends:
        cudas = [None] if backend == "cpu" else ([nvcc_cuda] if nvcc_cuda else [])
        for cuda in cudas:
            fits = [e for e in envs if e.cuda == cuda]
            for e in fits:
                names.append(variant_name("torch", backend, torch_minor=e.minor, cuda=cuda, cxx11_abi=e.cxx11_abi))
            if config.torch.stable_abi and backend == "cuda" and fits:
                names.append(variant_name("stable-abi", backend, stable_abi=config.torch.stable_abi, cuda=cuda))
    out: list[Target] = []
    for name in dict.fromkeys(names):
        out.append(parse_target(name, config))
    return out


def build_variants(
    kernel_dir: Path,
    variants: Sequence[str] = (),
    *,
    all_local: bool = False,
    out_dir: Path | None = None,
    jobs: int | None = None,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
    python: Sequence[str | Path] = (),
    keep_going: bool = False,
) -> list[BuiltVariant | BuildFailure]:
    """Build several variants in turn with ``[i/n]`` progress lines and a summary table at the end (on
    ``progress``). Stops at the first failure unless ``keep_going``; failures are returned as BuildFailure."""
    log = progress or _stderr
    config = load_build_config(Path(kernel_dir))
    names = list(dict.fromkeys(variants))
    if all_local:
        names += [t.variant for t in local_targets(config, tuple(str(p) for p in python)) if t.variant not in names]
    if not names:
        names = [default_target(config).variant]
    results: list[BuiltVariant | BuildFailure] = []
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name}")
        t0 = time.monotonic()
        try:
            results.append(build_variant(kernel_dir, out_dir=out_dir, variant=name, jobs=jobs, verbose=verbose,
                                         progress=log, python=python or None))
        except (BuildError, BuildConfigError) as e:
            results.append(BuildFailure(variant=name, error=str(e), seconds=time.monotonic() - t0))
            log(f"  FAILED: {str(e).splitlines()[0]}")
            if not keep_going:
                break
    log(summary_table(results, names))
    return results


def summary_table(results: list, names: list[str]) -> str:
    """One row per requested variant: status, torch, archs, glibc, size, seconds."""
    rows = [("variant", "status", "torch", "archs", "glibc", "size", "time")]
    done = {r.variant: r for r in results}
    for name in names:
        r = done.get(name)
        if r is None:
            rows.append((name, "skipped", "", "", "", "", ""))
        elif isinstance(r, BuildFailure):
            rows.append((name, "FAILED", "", "", "", "", f"{r.seconds:.1f}s"))
        else:
            rows.append((name, "ok", r.torch or "-", ",".join(r.archs) or "-", r.glibc or "-",
                         f"{r.size_bytes / 1e6:.2f} MB", f"{r.seconds:.1f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class BuildFailure:
    variant: str
    error: str
    seconds: float


def _build_dir(kernel_dir: Path) -> Path:
    root = kernel_dir / BUILD_DIR_NAME
    root.mkdir(exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# kernel_loader build scratch; safe to delete\n*\n")  # keeps git status clean
    return root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per (kernel dir, variant) at a time; a second waits rather than racing on the objects."""
    import fcntl  # POSIX only; imported here so the package still imports elsewhere

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_PROBE = """
import sys, torch
torch.ops.load_library(sys.argv[1])
prefix = sys.argv[2] + "::"
names = {n[len(prefix):].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)}
print("\\n".join(sorted(names)))
"""


def probe_ops(library: Path, ops_id: str, *, python: str | None = None) -> list[str]:
    """Load the library in a fresh interpreter (``python``: the torch it was compiled against; undefined symbols
    show up here, not at the user's) and list the ops it registered under ``ops_id``; none means the binding
    ignored TORCH_EXTENSION_NAME. CUDA libraries load without a GPU; their ops are listed all the same."""
    proc = subprocess.run([python or sys.executable, "-c", _PROBE, str(library), ops_id], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise BuildError(f"{library.name} does not load with torch.ops.load_library:\n{proc.stderr.strip()[-3000:]}")
    ops = [line for line in proc.stdout.split() if line]
    if not ops:
        raise BuildError(
            f"{library.name} loaded but registered no ops under namespace {ops_id!r}; register them with "
            f"TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) (or STABLE_TORCH_LIBRARY) so every build gets its own namespace"
        )
    return ops


def _assemble(
    config: BuildConfig, plan: BuildPlan, library: Path | None, ops: list[str], src_hash: str, variant: str,
    out_root: Path, *, env=None, abi: AbiReport | None = None, target: Target | None = None, stage=None,
) -> Path:
    """Stage the variant folder (package, _ops.py, library, build-info.json), add any further files, then seal
    (metadata.json with the digest of every file) and rename into place. Files added before ``seal`` are covered
    by the digest."""
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}.tmp-", dir=out_root))
    try:
        copy_package(config, staging)
        if stage is not None:  # AOT variants: cubin table and run-time module in, Triton sources out
            stage(staging)
        write_ops_py(staging, plan)
        if library is not None:
            shutil.copyfile(library, staging / plan.library_name)
        source_git = git_status(config.kernel_dir)
        info = {
            "builder": builder_version(),
            "variant": variant,
            "kind": target.kind if target else None,
            "ops_id": plan.ops_id,
            "ops": ops,
            "source_sha256": src_hash,
            "source_git": source_git,
            "torch": env.torch_version if env is not None else None,
            "torch_cuda": env.cuda if env is not None else None,
            "python": ".".join(map(str, sys.version_info[:3])),
            "cflags": list(plan.cflags),
            "cuda_flags": list(plan.cuda_flags),
            "ldflags": [f for f in plan.ldflags if not f.startswith("-L")],  # no machine paths
            "units": {u.src: list(u.flags) for u in plan.units},
            "abi_check": abi.as_dict() if abi is not None else None,
            **plan.info,
        }
        if library is not None:  # publish compares these with the version branch (API changes need a new version)
            from .schemas import record_op_schemas

            info["op_schemas"] = record_op_schemas(library, plan.ops_id, env.python if env is not None else None)
        (staging / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        from ..selftest.write import write_reference

        write_reference(staging, config.kernel_dir)  # before seal: reference.safetensors is in the digest
        provenance: dict = {"kernel-builder": {"version": builder_version()}}
        if source_git is not None:
            provenance["kernel"] = source_git
        meta = metadata_dict(config, plan, provenance)
        if abi is not None and abi.glibc_required:
            meta["requires"] = {"glibc": abi.glibc_required}  # kernels ignores unknown keys; people read it
        seal(staging, meta)
        staging.chmod(0o755)  # mkdtemp makes it 0700; a published folder is world-readable
        dest = out_root / variant
        install_atomically(staging, dest)
        return dest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
