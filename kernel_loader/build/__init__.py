"""Build kernel source repos (build.toml, kernel-builder edition 5) into Hub-layout variant folders.

    from kernel_loader.build import build_variant
    built = build_variant(Path("kernel_repos/flash-attn2"))   # -> kernel_repos/flash-attn2/build/<variant>/
    build_variants(Path("kernel_repos/flash-attn2"), ["torch213-cxx11-cpu-x86_64-linux",
                   "torch214-cxx11-cu130-x86_64-linux", "torch-stable-abi210-cu130-x86_64-linux"])

See ``config`` for the build.toml subset, ``targets`` for variant kinds, ``torchenv`` for where other torches are
found, ``backends`` for per-backend flags, ``abicheck`` for the ABI check, ``variant`` for the folder layout.
"""

from .backends import BuildError, BuildPlan, CompileUnit
from .abicheck import AbiReport, check_library
from .builder import BuildFailure, build_variant, build_variants, default_target, local_targets, probe_ops
from .config import BuildConfig, BuildConfigError, KernelSection, TorchSection, load_build_config
from .targets import Target, parse_target, variant_name
from .torchenv import TorchEnv, find_env
from .variant import BuiltVariant, host_variant, source_hash

__all__ = [
    "AbiReport",
    "BuildFailure",
    "Target",
    "TorchEnv",
    "build_variants",
    "check_library",
    "default_target",
    "find_env",
    "local_targets",
    "parse_target",
    "variant_name",
    "BuildConfig",
    "BuildConfigError",
    "BuildError",
    "BuildPlan",
    "BuiltVariant",
    "CompileUnit",
    "KernelSection",
    "TorchSection",
    "build_variant",
    "host_variant",
    "load_build_config",
    "probe_ops",
    "source_hash",
]
