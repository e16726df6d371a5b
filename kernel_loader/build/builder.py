"""``build_variant``: kernel source dir -> ``<out>/<variant>/`` in the Hub layout kernels loads.

Steps: read build.toml -> pick the variant this machine builds -> hash the sources (the hash names the op
namespace) -> plan (per backend) -> ninja in ``<kernel_dir>/.build/<variant>/`` -> load the library in a fresh
process and list its ops -> assemble package, _ops.py, library, build-info.json, metadata.json in a temp folder
-> rename into place.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .backends import PLANNERS, BuildError, BuildPlan
from .compile import run_ninja
from .config import BuildConfig, load_build_config
from .variant import (
    BuiltVariant,
    check_torch_range,
    check_variant,
    copy_package,
    default_backend,
    git_status,
    host_variant,
    install_atomically,
    metadata_dict,
    ops_id_for,
    seal,
    source_hash,
    write_ops_py,
)

BUILD_DIR_NAME = ".build"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
) -> BuiltVariant:
    """Build the variant of ``kernel_dir`` this machine can build into ``<out_dir or kernel_dir/build>/<variant>/``.

    ``variant``: check that this is the name being built (refused with the name this machine builds otherwise).
    ``jobs``: parallel compiles (ninja's default when None). ``progress``: step-line sink (stderr by default).
    Raises BuildConfigError for build.toml problems and BuildError for everything after.
    """
    log = progress or _stderr
    start = time.monotonic()
    config = load_build_config(Path(kernel_dir))
    backend = check_variant(variant, config.backends) if variant else default_backend(config)
    variant_name = host_variant(backend)
    check_torch_range(config)
    src_hash = source_hash(config)
    plan = PLANNERS[backend](config, ops_id_for(config, backend, src_hash))
    log(f"building {config.name} v{config.version} -> {variant_name} (ops namespace {plan.ops_id})")

    build_dir = _build_dir(config.kernel_dir) / variant_name
    out_root = Path(out_dir).resolve() if out_dir is not None else config.kernel_dir / "build"
    with _locked(build_dir.parent / f"{variant_name}.lock"):
        library = run_ninja(plan, config.kernel_dir, build_dir, jobs=jobs, verbose=verbose, progress=log)
        log("  checking the library loads and registers its ops")
        ops = probe_ops(library, plan.ops_id)
        log(f"  assembling {out_root / variant_name}")
        dest = _assemble(config, plan, library, ops, src_hash, variant_name, out_root)

    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    built = BuiltVariant(
        path=dest,
        variant=variant_name,
        name=config.name,
        backend=backend,
        ops_id=plan.ops_id,
        library=dest / plan.library_name,
        ops=tuple(ops),
        size_bytes=size,
        seconds=time.monotonic() - start,
        source_hash=src_hash,
    )
    log(built.summary())
    return built


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


def probe_ops(library: Path, ops_id: str) -> list[str]:
    """Load the library in a fresh interpreter (undefined symbols show up here, not at the user's) and list the
    ops it registered under ``ops_id``; none means the binding ignored TORCH_EXTENSION_NAME."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(library), ops_id], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{library.name} does not load with torch.ops.load_library:\n{proc.stderr.strip()[-3000:]}")
    ops = [line for line in proc.stdout.split() if line]
    if not ops:
        raise BuildError(
            f"{library.name} loaded but registered no ops under namespace {ops_id!r}; register them with "
            f"TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) so every build gets its own namespace"
        )
    return ops


def _assemble(
    config: BuildConfig, plan: BuildPlan, library: Path, ops: list[str], src_hash: str, variant: str, out_root: Path
) -> Path:
    import torch

    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}.tmp-", dir=out_root))
    try:
        copy_package(config, staging)
        write_ops_py(staging, plan)
        shutil.copyfile(library, staging / plan.library_name)
        source_git = git_status(config.kernel_dir)
        info = {
            "builder": builder_version(),
            "variant": variant,
            "ops_id": plan.ops_id,
            "ops": ops,
            "source_sha256": src_hash,
            "source_git": source_git,
            "torch": torch.__version__,
            "python": ".".join(map(str, sys.version_info[:3])),
            "cflags": list(plan.cflags),
            "ldflags": [f for f in plan.ldflags if not f.startswith("-L")],  # no machine paths
            "units": {u.src: list(u.flags) for u in plan.units},
            **plan.info,
        }
        from .schemas import record_op_schemas  # publish compares these with the version branch

        info["op_schemas"] = record_op_schemas(library, plan.ops_id)
        (staging / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        from ..selftest import write_reference

        write_reference(staging, config.kernel_dir)  # before seal: reference.safetensors is in the digest
        provenance: dict = {"kernel-builder": {"version": builder_version()}}
        if source_git is not None:
            provenance["kernel"] = source_git
        seal(staging, metadata_dict(config, plan, provenance))
        staging.chmod(0o755)  # mkdtemp makes it 0700; a published folder is world-readable
        dest = out_root / variant
        install_atomically(staging, dest)
        return dest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
