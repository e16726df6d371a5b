"""The build matrix: ``kernel_repos/matrix.toml`` x each kernel's build.toml -> variant names.

    matrix = load_matrix(Path("kernel_repos/matrix.toml"))
    kernels = discover_kernels(Path("kernel_repos"))
    entries = expand(matrix, kernels)            # one MatrixEntry per variant CI builds

:mod:`.model` (the data, read and validated), :mod:`.expand` (entries and the Actions include list),
:mod:`.local` (what this machine can build), :mod:`.status` (local builds and a Hub repo), :mod:`.workflow`
(the generated block of the workflow file).
"""

from .expand import expand, github_include, variant_name
from .local import BuildEnv, LocalBuild, find_build_envs, local_plan, nvcc_version
from .model import (MATRIX_FILE, BackendSpec, KernelInfo, KernelSettings, Matrix, MatrixEntry, MatrixError,
                    check_capability, default_root, discover_kernels, load_matrix, read_kernel)
from .status import VariantStatus, format_status, hub_variants, local_variants, status
from .workflow import WORKFLOW_BEGIN, WORKFLOW_END, update_workflow

__all__ = ["MATRIX_FILE", "WORKFLOW_BEGIN", "WORKFLOW_END", "BackendSpec", "BuildEnv", "KernelInfo",
           "KernelSettings", "LocalBuild", "Matrix", "MatrixEntry", "MatrixError", "VariantStatus",
           "check_capability", "default_root", "discover_kernels", "expand", "find_build_envs", "format_status",
           "github_include", "hub_variants", "load_matrix", "local_plan", "local_variants", "nvcc_version",
           "read_kernel", "status", "update_workflow", "variant_name"]
