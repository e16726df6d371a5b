"""kernel_loader: attention kernels from the Hugging Face Hub, with PyTorch SDPA as the floor.

    import kernel_loader
    kernel_loader.enable()                      # transformers: attn_implementation="org/repo" goes through us
    k = kernel_loader.load("kernels-community/flash-attn2")   # or load it yourself
    attn = kernel_loader.sdpa_like("kernels-community/flash-attn2")  # drop-in for F.scaled_dot_product_attention
"""

__version__ = "0.1.0"

from .fallback import KernelFallbackWarning, KernelUnavailable  # noqa: E402
from .spec import KernelSpec, parse_spec  # noqa: E402


def __getattr__(name):
    # torch and the Hub clients load on first use, so `kernel-loader hub serve` and `--help` start fast.
    if name == "LoadedKernel":
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'kernel_loader' has no attribute {name!r}")


def load(spec, *, version=None, strict=None, trust=None, lock=None):
    """See :func:`kernel_loader.api.load`."""
    from .api import load as _load

    return _load(spec, version=version, strict=strict, trust=trust, lock=lock)


def offline(enabled=True):
    """``with kernel_loader.offline():`` resolve from the cache only, open no socket (see offline_mode)."""
    from .offline_mode import offline as _offline

    return _offline(enabled)


def sdpa_like(spec, *, version=None, strict=None, trust=None):
    """A drop-in for ``torch.nn.functional.scaled_dot_product_attention`` backed by the kernel ``spec``
    ((B, H, S, D) layout, attn_mask, is_causal, scale, enable_gqa); calls the kernel cannot take go to SDPA."""
    return load(spec, version=version, strict=strict, trust=trust).sdpa


def enable(*args, **kwargs):
    """Route transformers' hub-kernel ``attn_implementation`` strings through kernel_loader (idempotent)."""
    from .transformers_hook import enable as _enable

    return _enable(*args, **kwargs)


__all__ = ["KernelFallbackWarning", "KernelSpec", "KernelUnavailable", "LoadedKernel", "enable", "load", "offline",
           "parse_spec", "sdpa_like", "__version__"]
