"""Ahead-of-time compiled Triton kernels: cubins per arch plus one stable-ABI launcher, built on a CPU machine.

A kernel repo opts in with ``aot.toml`` beside build.toml (kernel-builder's schema has no key for it):

    spec = "aot/spec.py"        # configurations(arch, tiles) -> every (configuration) to compile; imports Triton
    tiles = "aot/tiles.toml"    # per-arch tile configs (data, committed)
    archs = ["8.0", "9.0", "10.0"]
    exclude = ["_triton_fwd.py", ...]   # package files that import Triton: left out of the AOT variants

For such a repo every CUDA variant (stable ABI ``torch-stable-abi210-cuXYZ`` or exact ``torchXY-cxx11-cuXYZ``) is
an AOT variant: ``compile_cubins`` (run in a Python with Triton, see :func:`triton_python`) compiles each
(arch, configuration) into ``cubins/{table.json,images.bin}``; :func:`plan_aot` compiles ``launcher.cpp`` (host
compiler only, no nvcc, no CUDA runtime: the driver is dlopen'd) against torch's stable ABI; :func:`stage` puts
the cubins, ``_aot_runtime.py`` (runtime.py) and the package minus the excluded files into the variant folder.
Cubins do not depend on the CUDA runtime, so one launcher build serves cu126, cu128 and cu130 variant names.
"""

from .config import AOT_FILE, AotConfig, load_aot_config
from .plan import aot_accepts, build_cubins, plan_aot, stage, triton_python

__all__ = ["AOT_FILE", "AotConfig", "aot_accepts", "build_cubins", "load_aot_config", "plan_aot", "stage",
           "triton_python"]
