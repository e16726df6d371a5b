"""The transformers integration: the only code that writes into transformers' ``AttentionInterface`` and
``AttentionMaskInterface``, with one undo list, so :func:`disable` restores both interfaces whichever way a
name was registered (:func:`register`, :func:`load_and_register`, or the hook below).

Registering by hand
-------------------
``register(name, loaded)`` puts ``loaded.attention`` under ``name`` in ``AttentionInterface`` and the mask
function of its ``mask_format`` in ``AttentionMaskInterface`` ("flash" -> ``masking_utils.flash_attention_mask``,
"sdpa" -> ``masking_utils.sdpa_mask``; a fallback gets the sdpa one), and records it in
:mod:`kernel_loader.registry`. ``load_and_register(spec, name=...)`` loads first; this is how a fallback chain gets
a name transformers accepts (``attn_implementation`` takes one org/name).

Routing hub-kernel strings
--------------------------

What is hooked, and why there
-----------------------------
In transformers 5.22.x and 5.23.x both public entry points reach a hub kernel through one function:

    from_pretrained(..., attn_implementation="org/repo")   -> PreTrainedModel.__init__
    model.set_attn_implementation("org/repo")               -> (directly)
        -> PreTrainedModel._check_and_adjust_attn_implementation      (is_kernel(...) matches "org/repo[@rev][:fn]")
        -> modeling_flash_attention_utils.lazy_import_flash_attention (cached per string in `_loaded_implementation`)
        -> modeling_flash_attention_utils._lazy_imports
             `from .integrations.hub_kernels import load_and_register_attn_kernel`   (looked up at call time)
        -> integrations.hub_kernels.load_and_register_attn_kernel(attn_implementation, attention_wrapper,
                                                                 allow_all_kernels) -> kernel module

``enable()`` replaces only the module attribute ``transformers.integrations.hub_kernels.load_and_register_attn_kernel``
(the name ``_lazy_imports`` imports on every call). The replacement calls ``kernel_loader.load(spec)`` and writes
``loaded.attention`` under the exact ``attn_implementation`` string into ``AttentionInterface`` and the matching mask
function into ``AttentionMaskInterface`` -- the same two registrations transformers makes itself, through the same
undo list as :func:`register` -- and records it in ``kernel_loader.registry`` under the same name. Nothing else is
patched:

- ``is_kernel`` needs no change: it is a pure regex on the string.
- ``is_kernels_available()`` is only consulted inside the replaced function (the 5.23.0 ImportError "kernels ...
  0.18.2 <= version < 0.19.0" comes from there) and, in ``_check_and_adjust_attn_implementation``, for the
  ``flash_attention_2`` -> ``kernels-community/flash-attn2`` fallback, which we deliberately leave alone.
- ``allow_all_kernels`` is ignored: kernel_loader applies its own trust policy (``KERNEL_LOADER_TRUST``).
- The version (``get_attn_kernel_version``) transformers would pick is ignored: the spec string decides
  (``@vN``/``@rev``), otherwise kernel_loader's default.

The replacement returns the kernel module when it has ``flash_attn_varlen_func`` (so transformers' own flash helpers
and continuous batching see the kernel, as they would natively), otherwise a small stand-in with
``flash_attn_forward`` so that ``_lazy_imports`` accepts it without a varlen function (e.g. after a fallback to SDPA).

transformers 5.22.x marks a string as loaded *before* the load runs, so a failed load (strict mode) would be skipped
silently on the next attempt; the hook clears that marker on failure, and ``enable()`` clears a marker left by a
failed native attempt made before it was called.

What the registered attention receives (checked on 5.22.2 and 5.23.0 with Llama):
``attention(module, q, k, v, attention_mask, dropout=0.0, scaling=..., **kwargs)``, q/k/v in (B, H, S, D), GQA
not expanded. With mask_format "flash" ``attention_mask`` is None (no padding) or a bool (B, S_kv) padding mask,
True = token, already sliced to the last S_kv columns; during decode S_q (1) < S_kv and the queries are the last
S_q positions. kwargs carry ``position_ids`` ((1, S) in a plain forward even with left padding; (B, S) from
``generate``) and ``use_cache``; ``cu_seq_lens_q/k`` + ``max_length_q/k`` only when the caller passes them
(padding-free training); ``sliding_window``/``softcap``/``s_aux`` from models that use them; ``is_causal`` is
usually absent (read ``module.is_causal``). A user-supplied 4-D mask is passed through unchanged. Packed sequences
given only as ``position_ids`` (no mask, no cu_seq_lens) get ``attention_mask=None``: the flash mask function
ignores packing, so the kernel must derive cu_seqlens from ``position_ids`` itself. With "sdpa" the mask is
None (causal, no padding) or a bool (B, 1, S_q, S_kv) mask, True = attend.

``paged|org/repo`` is stripped to ``org/repo`` by ``_check_and_adjust_attn_implementation`` (with a FutureWarning)
before it reaches the hook; a ``paged|`` string that arrives anyway is passed to ``kernel_loader.load`` verbatim.
A kernel module with the paged API (``adapters.is_paged_module``) gets the paged adapter either way.

Continuous batching (``generate_batch`` / ``ContinuousBatchingManager``) accepts only "sdpa", "paged|eager" and names
containing "flash" (``ContinuousBatchingManager.switch_to_cb_friendly_attn`` raises otherwise). ``enable()`` also wraps
that one method: when the model's implementation is a paged kernel loaded through this hook, it is kept as is (its
attention updates the paged cache itself, see ``adapters.adapt_paged``); anything else goes to transformers' method.

Version policy: by contract, not version number (:mod:`.transformers_seams`). The hook installs on every release
>= 5.22 whose required seams exist (the function above with its ``attn_implementation`` parameter, and
``_lazy_imports`` reaching it by name); a release newer than the tested window (``TESTED_TRANSFORMERS``) gets it
with one warning naming the window; a missing seam (or a release before 5.22) leaves transformers unhooked with one
warning naming it, or raises :class:`UnsupportedTransformersVersion` when strict.
``enable()`` also wraps ``PreTrainedModel._check_and_adjust_attn_implementation`` (a model that declares no flash
support gets sdpa with the reason instead of a flash-format kernel, and never 5.24's ValueError) and
``set_attn_implementation`` (hub-kernel strings inside a sub-config dict are loaded first). The per-release
contracts are in TRANSFORMERS.md.
"""

from __future__ import annotations

import threading
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import registry
from ..adapters import is_paged_module
from ..api import LoadedKernel, load
from ..errors import KernelFallbackWarning
from ..fallback import is_strict
from ..spec import PAGED_PREFIX
from . import transformers_seams as seams
from .transformers_seams import TESTED_TRANSFORMERS, UnsupportedTransformersVersion  # noqa: F401

MASK_FORMATS = ("flash", "sdpa")

# Seam for the loader: None means kernel_loader.api.load.
_loader: Callable[..., Any] | None = None


@dataclass
class _HookState:
    hub_kernels: types.ModuleType
    original: Callable
    version: str
    strict: bool | None
    loaded: dict[str, Any] = field(default_factory=dict)  # attn_implementation string -> LoadedKernel


_state: _HookState | None = None
_lock = threading.RLock()
_warned_versions: set[str] = set()
_MISSING = object()
# The one undo list: name -> (what AttentionInterface, AttentionMaskInterface held before our first write).
_previous: dict[str, tuple[Any, Any]] = {}


def mask_function(mask_format: str):
    """transformers' mask builder for a LoadedKernel.mask_format."""
    from transformers import masking_utils

    if mask_format == "flash":
        return masking_utils.flash_attention_mask
    if mask_format == "sdpa":
        return masking_utils.sdpa_mask
    raise ValueError(f"unknown mask_format {mask_format!r}; valid: {', '.join(MASK_FORMATS)}")


def _interfaces():
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    return AttentionInterface, AttentionMaskInterface


def _write(name: str, attention: Callable, masker: Callable) -> None:
    """Register ``name`` in both interfaces, remembering what was there first (for :func:`disable`)."""
    attn_if, mask_if = _interfaces()
    with _lock:
        if name not in _previous:
            _previous[name] = (attn_if._global_mapping.get(name, _MISSING), mask_if._global_mapping.get(name, _MISSING))
        attn_if.register(name, attention)
        mask_if.register(name, masker)


def register(name: str, loaded: LoadedKernel) -> bool:
    """Register in transformers' AttentionInterface + AttentionMaskInterface and in our registry; False (our
    registry only) if transformers is absent."""
    registry.register(name, loaded)
    try:
        masker = mask_function(loaded.mask_format)
    except ImportError:
        return False
    # transformers 5.22 strips "paged|" before looking a name up (AttentionInterface.get_interface): register both
    names = (name, name[len(PAGED_PREFIX):]) if name.startswith(PAGED_PREFIX) else (name,)
    for n in names:
        _write(n, loaded.attention, masker)
    return True


def load_and_register(spec: str, *, name: str | None = None, version=None, strict=None, trust=None,
                      transformers: bool = True) -> LoadedKernel:
    """``load(spec)`` then register it under ``name`` (default: the spec string itself); ``transformers=False``
    registers it in our registry only."""
    loaded = load(spec, version=version, strict=strict, trust=trust)
    if transformers:
        register(name or spec, loaded)
    else:
        registry.register(name or spec, loaded)
    return loaded


def enable(*, strict: bool | None = None, force: bool = False) -> None:
    """Make hub-kernel ``attn_implementation`` strings load through kernel_loader. Idempotent (a repeat call only
    updates ``strict``).

    ``strict`` is passed to ``kernel_loader.load`` (None: ``KERNEL_LOADER_STRICT`` decides). ``force`` is accepted
    for compatibility and changes nothing: whether the hook installs is decided by the seams (module docstring).
    """
    global _state
    with _lock:
        if _state is not None:
            _state.strict = strict
            return
        try:
            from transformers.integrations import hub_kernels
        except ImportError as e:
            raise ImportError(
                f"kernel_loader.enable() needs transformers >= 5.22 (tested: {seams.tested_window()}): "
                "pip install 'transformers>=5.22'"
            ) from e
        try:
            version, newer = seams.check_installable()
        except UnsupportedTransformersVersion as e:
            if is_strict(strict):
                raise
            # Not hooked: hub-kernel strings get transformers' own behaviour; say so once, in one line.
            warnings.warn(f"kernel_loader: transformers hook not installed: {e}", KernelFallbackWarning, stacklevel=3)
            return
        if newer and newer not in _warned_versions:
            _warned_versions.add(newer)
            warnings.warn(newer, UserWarning, stacklevel=3)
        original = hub_kernels.load_and_register_attn_kernel
        _state = _HookState(hub_kernels=hub_kernels, original=original, version=version, strict=strict)
        hub_kernels.load_and_register_attn_kernel = _load_and_register
        _clear_stale_native_marker()
        _hook_continuous_batching(install=True)
        seams.install(is_kernel=hub_kernels.is_kernel, ensure_loaded=_ensure_loaded)


def disable() -> None:
    """Undo :func:`enable` and every registration made here: restore transformers' function and both interfaces'
    entries as they were before kernel_loader wrote them."""
    global _state
    with _lock:
        state, _state = _state, None
        if state is not None:
            state.hub_kernels.load_and_register_attn_kernel = state.original
            _hook_continuous_batching(install=False)
            seams.uninstall()
        if not _previous:
            return
        attn_if, mask_if = _interfaces()
        for name, (attn_prev, mask_prev) in _previous.items():
            for mapping, prev in ((attn_if._global_mapping, attn_prev), (mask_if._global_mapping, mask_prev)):
                if prev is _MISSING:
                    mapping.pop(name, None)
                else:
                    mapping[name] = prev
            _forget_loaded_marker(name)
        _previous.clear()


def is_enabled() -> bool:
    return _state is not None


def loaded_kernels() -> dict[str, Any]:
    """The LoadedKernel registered for each ``attn_implementation`` string since :func:`enable`."""
    with _lock:
        return dict(_state.loaded) if _state is not None else {}


def status():
    """The hook's state for the installed transformers (``kernel-loader doctor``)."""
    return seams.status(enabled=is_enabled())


def _ensure_loaded(attn_implementation: str):
    """Load and register ``attn_implementation`` through the hook (as transformers would) and return its
    LoadedKernel; used by the model-side wrappers in transformers_seams."""
    with _lock:
        state = _state
        if state is not None and attn_implementation in state.loaded:
            return state.loaded[attn_implementation]
    _load_and_register(attn_implementation)
    return _state.loaded[attn_implementation]


def _load_and_register(
    attn_implementation: str, attention_wrapper: Callable | None = None, allow_all_kernels: bool = False
):
    """Stands in for transformers' load_and_register_attn_kernel (same parameters)."""
    state = _state
    if state is None:  # disabled while a reference to us was held
        from transformers.integrations import hub_kernels

        return hub_kernels.load_and_register_attn_kernel(attn_implementation, attention_wrapper, allow_all_kernels)
    body = attn_implementation.split("|", 1)[1] if "|" in attn_implementation else attn_implementation
    if not state.hub_kernels.is_kernel(body):
        return None  # same contract as transformers: not a hub kernel string
    try:
        loaded = (_loader or load)(attn_implementation, strict=state.strict)
        masker = mask_function(loaded.mask_format)
    except BaseException:
        _forget_loaded_marker(attn_implementation)
        raise
    module = loaded.module
    has_varlen = module is not None and hasattr(module, "flash_attn_varlen_func")
    # Like transformers: a caller's wrapper (e.g. a paged one) replaces the default call, for varlen kernels only.
    attention = attention_wrapper if attention_wrapper is not None and has_varlen else loaded.attention
    with _lock:
        _write(attn_implementation, attention, masker)
        state.loaded[attn_implementation] = loaded
    # kernel_loader.registry.get(name) then finds what transformers uses.
    registry.register(attn_implementation, loaded)
    if has_varlen:
        return module
    # No varlen entry point (or no module after a fallback): _lazy_imports accepts a module with flash_attn_forward.
    return types.SimpleNamespace(flash_attn_forward=loaded.attention, supports_flash_attn=False)


def _flash_utils():
    from transformers import modeling_flash_attention_utils

    return modeling_flash_attention_utils


def _forget_loaded_marker(attn_implementation: str) -> None:
    # 5.22 sets _loaded_implementation before loading; clear it so the next request loads again.
    utils = _flash_utils()
    if getattr(utils, "_loaded_implementation", None) == attn_implementation:
        utils._loaded_implementation = None


def _clear_stale_native_marker() -> None:
    from transformers.modeling_utils import AttentionInterface

    utils = _flash_utils()
    name = getattr(utils, "_loaded_implementation", None)
    if isinstance(name, str) and "/" in name and name not in AttentionInterface._global_mapping:
        utils._loaded_implementation = None


_cb_original: Callable | None = None


def _hook_continuous_batching(install: bool) -> None:
    """Install/remove the ContinuousBatchingManager.switch_to_cb_friendly_attn wrapper (see the module docstring)."""
    global _cb_original
    try:
        from transformers.generation.continuous_batching import continuous_api
    except ImportError:
        return
    cls = getattr(continuous_api, "ContinuousBatchingManager", None)
    if cls is None or not hasattr(cls, "switch_to_cb_friendly_attn"):
        return
    if not install:
        if _cb_original is not None:
            cls.switch_to_cb_friendly_attn = _cb_original
            _cb_original = None
        return
    if _cb_original is not None:
        return
    _cb_original = original = cls.switch_to_cb_friendly_attn

    def switch_to_cb_friendly_attn(self, model, *args, **kwargs):
        state = _state
        loaded = state.loaded.get(model.config._attn_implementation) if state is not None else None
        if loaded is not None and loaded.module is not None and is_paged_module(loaded.module):
            return None  # our paged kernel handles the paged cache itself
        return original(self, model, *args, **kwargs)

    cls.switch_to_cb_friendly_attn = switch_to_cb_friendly_attn
