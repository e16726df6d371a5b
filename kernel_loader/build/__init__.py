"""Build kernel source repos (build.toml, kernel-builder edition 5) into Hub-layout variant folders.

    from kernel_loader.build import build_variant
    built = build_variant(Path("kernel_repos/flash-attn2"))   # -> kernel_repos/flash-attn2/build/<variant>/

See ``config`` for the build.toml subset, ``backends`` for per-backend flags, ``variant`` for the folder layout.
"""

from .backends import BuildError, BuildPlan, CompileUnit
from .builder import build_variant, probe_ops
from .cli import add_build_arguments, run_build
from .config import BuildConfig, BuildConfigError, KernelSection, TorchSection, load_build_config
from .variant import BuiltVariant, check_variant, host_variant, source_hash

__all__ = [
    "BuildConfig",
    "BuildConfigError",
    "BuildError",
    "BuildPlan",
    "BuiltVariant",
    "CompileUnit",
    "KernelSection",
    "TorchSection",
    "add_build_arguments",
    "build_variant",
    "check_variant",
    "host_variant",
    "load_build_config",
    "probe_ops",
    "run_build",
    "source_hash",
]
