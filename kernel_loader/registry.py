"""Where loaded kernels are registered: our own registry (plain torch) and transformers' interfaces.

A kernel registered under a name is callable by that name from two places:
- ``kernel_loader.registry.get(name)`` -> the LoadedKernel (``.attention``, ``.sdpa``) for plain torch code;
- transformers: ``AttentionInterface[name]`` and ``AttentionMaskInterface[name]``, so
  ``attn_implementation=name`` works. A kernel with the flash mask format gets transformers' flash mask function
  (None or a 2-D padding mask; padding handled through varlen); a fallback gets the sdpa mask function.
"""

from __future__ import annotations

import threading

from .api import LoadedKernel, load

_lock = threading.Lock()
_registry: dict[str, LoadedKernel] = {}


def register(name: str, loaded: LoadedKernel, *, transformers: bool = True) -> LoadedKernel:
    with _lock:
        _registry[name] = loaded
    if transformers:
        register_in_transformers(name, loaded)
    return loaded


def get(name: str) -> LoadedKernel:
    try:
        return _registry[name]
    except KeyError:
        have = ", ".join(sorted(_registry)) or "none"
        raise KeyError(f"no kernel registered as {name!r}; registered: {have}") from None


def registered() -> dict[str, LoadedKernel]:
    return dict(_registry)


def load_and_register(spec: str, *, name: str | None = None, version=None, strict=None, trust=None,
                      transformers: bool = True) -> LoadedKernel:
    """``load(spec)`` then register it under ``name`` (default: the spec string itself)."""
    loaded = load(spec, version=version, strict=strict, trust=trust)
    return register(name or spec, loaded, transformers=transformers)


MASK_FORMATS = ("flash", "sdpa")


def mask_function(mask_format: str):
    """transformers' mask builder for a LoadedKernel.mask_format."""
    from transformers import masking_utils

    if mask_format == "flash":
        return masking_utils.flash_attention_mask
    if mask_format == "sdpa":
        return masking_utils.sdpa_mask
    raise ValueError(f"unknown mask_format {mask_format!r}; valid: {', '.join(MASK_FORMATS)}")


def register_in_transformers(name: str, loaded: LoadedKernel) -> bool:
    """Register in transformers' AttentionInterface + AttentionMaskInterface; False if transformers is absent."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return False
    # transformers 5.22 strips "paged|" before looking a name up (AttentionInterface.get_interface): register both
    names = (name, name[len("paged|"):]) if name.startswith("paged|") else (name,)
    for n in names:
        AttentionInterface.register(n, loaded.attention)
        AttentionMaskInterface.register(n, mask_function(loaded.mask_format))
    return True
