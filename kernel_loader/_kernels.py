"""The only importer of the `kernels` library's private names (``kernels._rust``, ``kernels.backends._backend``,
``kernels.hf_hub._platform``, ``kernels.archs._supports_cuda_capability``), so the next `kernels` release that
moves one touches this file alone. Names resolve on first use: importing this module imports nothing of kernels.
"""

from __future__ import annotations

import importlib

# our name -> (module, attribute)
_PRIVATE = {
    "Metadata": ("kernels._rust", "Metadata"),
    "Digest": ("kernels._rust", "Digest"),
    "DigestAlgorithm": ("kernels._rust", "DigestAlgorithm"),
    "DigestValidationError": ("kernels._rust", "DigestValidationError"),
    "Build": ("kernels._rust", "Build"),
    "KernelDependency": ("kernels._rust", "KernelDependency"),
    "KernelLock": ("kernels._rust", "KernelLock"),
    "KernelLocks": ("kernels._rust", "KernelLocks"),
    "KernelVersion": ("kernels._rust", "KernelVersion"),
    "backend": ("kernels.backends", "_backend"),
    "dependency_data": ("kernels.python_deps", "_DEPENDENCY_DATA"),
    "platform": ("kernels.hf_hub", "_platform"),
    "supports_cuda_capability": ("kernels.archs", "_supports_cuda_capability"),
}


def __getattr__(name: str):
    try:
        module, attr = _PRIVATE[name]
    except KeyError:
        raise AttributeError(f"module 'kernel_loader._kernels' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value
