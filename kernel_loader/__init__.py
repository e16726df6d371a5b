"""kernel_loader: attention kernels from the Hugging Face Hub, with PyTorch SDPA as the floor.

    import kernel_loader
    kernel_loader.enable()                      # transformers: attn_implementation="org/repo" goes through us
    k = kernel_loader.load("kernels-community/flash-attn2")   # or load it yourself
    attn = kernel_loader.sdpa_like("kernels-community/flash-attn2")  # drop-in for F.scaled_dot_product_attention

Every public name below is the implementing module's own object, looked up on first use (so ``kernel-loader hub
serve`` and ``--help`` start without torch or the Hub clients): a signature here cannot drift from its
implementation. The package layout, bottom to top, is in the README ("Layout").
"""

from ._version import __version__

# public name -> module that defines it (read by tests/test_layers.py as imports of this package)
_EXPORTS = {
    "KernelFallbackWarning": "kernel_loader.errors",
    "KernelUnavailable": "kernel_loader.errors",
    "KernelSpec": "kernel_loader.spec",
    "parse_spec": "kernel_loader.spec",
    "LoadedKernel": "kernel_loader.api",
    "load": "kernel_loader.api",
    "sdpa_like": "kernel_loader.api",
    "offline": "kernel_loader.offline_mode",
    "enable": "kernel_loader.integrations.transformers",
    "disable": "kernel_loader.integrations.transformers",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel_loader' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted([*_EXPORTS, "__version__"])
