"""Which transformers seams exist (decided by what the installed code looks like, not by its version number), the
hook's state for ``kernel-loader doctor``, and the two model-side wrappers ``enable()`` adds.

Seams (TRANSFORMERS.md has the per-release table):

- required: ``integrations.hub_kernels.load_and_register_attn_kernel(attn_implementation, ...)`` and
  ``modeling_flash_attention_utils._lazy_imports`` importing it by name at call time (so replacing the module
  attribute is seen). Without both the hook cannot work and ``enable()`` raises, naming the missing piece.
- ``PreTrainedModel._check_and_adjust_attn_implementation``: wrapped so that a hub kernel taking flash-format masks
  is not given to a model that declares no flash support (``_supports_flash_attn = False``: T5, Llama4, Gemma3
  multimodal, ...): such a model gets transformers' sdpa, with one warning naming the model and the reason -- and
  never the 5.24 ``ValueError ... does not support Flash Attention yet``.
- ``PreTrainedModel.set_attn_implementation``: wrapped so that hub-kernel strings inside a sub-config dict are loaded
  and registered before transformers validates the dict (its sub-model path only accepts registered names).

A release newer than :data:`TESTED_TRANSFORMERS` gets the hook when the required seams are there, with one warning
naming the tested window; one older than 5.22 is refused.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TESTED_TRANSFORMERS: tuple[str, ...] = ("5.22.2", "5.23.0", "5.24.0")
OLDEST = (5, 22)


class UnsupportedTransformersVersion(RuntimeError):
    """The installed transformers lacks a seam the hook needs (or predates 5.22)."""


@dataclass(frozen=True)
class Seam:
    name: str
    present: bool
    required: bool
    detail: str = ""


@dataclass
class HookStatus:
    """What ``kernel-loader doctor`` prints about the transformers hook."""

    transformers: str | None
    installable: bool
    enabled: bool
    tested: bool
    reason: str
    seams: list[Seam] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"transformers": self.transformers, "installable": self.installable, "enabled": self.enabled,
                "tested": self.tested, "reason": self.reason,
                "seams": {s.name: s.present for s in self.seams}}


def tested_window() -> str:
    return ", ".join(TESTED_TRANSFORMERS)


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def inspect_seams() -> list[Seam]:
    """The seams of the importable transformers (ImportError if there is none)."""
    from transformers import modeling_flash_attention_utils as flash_utils
    from transformers import modeling_utils
    from transformers.integrations import hub_kernels

    seams = []
    fn = getattr(hub_kernels, "load_and_register_attn_kernel", None)
    params = list(inspect.signature(fn).parameters) if callable(fn) else []
    seams.append(Seam("hub_kernels.load_and_register_attn_kernel", "attn_implementation" in params, True,
                      f"parameters ({', '.join(params)})" if params else "missing"))
    lazy = getattr(flash_utils, "_lazy_imports", None)
    looked_up = "load_and_register_attn_kernel" in _source(lazy)
    seams.append(Seam("modeling_flash_attention_utils._lazy_imports", looked_up, True,
                      "imports load_and_register_attn_kernel at call time" if looked_up
                      else "does not reach load_and_register_attn_kernel"))
    model = modeling_utils.PreTrainedModel
    check = getattr(model, "_check_and_adjust_attn_implementation", None)
    seams.append(Seam("PreTrainedModel._check_and_adjust_attn_implementation", callable(check), False,
                      "refuses flash-named hub kernels on models without flash support"
                      if "does not support Flash Attention yet" in _source(check) else ""))
    seams.append(Seam("PreTrainedModel.set_attn_implementation",
                      callable(getattr(model, "set_attn_implementation", None)), False))
    try:
        from transformers.generation.continuous_batching import continuous_api

        cb = hasattr(getattr(continuous_api, "ContinuousBatchingManager", None), "switch_to_cb_friendly_attn")
    except ImportError:
        cb = False
    seams.append(Seam("ContinuousBatchingManager.switch_to_cb_friendly_attn", cb, False))
    return seams


def check_installable() -> tuple[str, str | None]:
    """(transformers version, warning or None). Raises ImportError without transformers and
    UnsupportedTransformersVersion when a required seam is missing or the release predates 5.22."""
    import transformers
    from packaging.version import Version

    version = transformers.__version__
    release = Version(version).release
    if release[:2] < OLDEST:
        raise UnsupportedTransformersVersion(
            f"transformers {version} predates 5.22, the oldest release with the hub-kernel seam this hook uses "
            f"(tested: {tested_window()}): pip install -U 'transformers>=5.22'")
    missing = [s for s in inspect_seams() if s.required and not s.present]
    if missing:
        raise UnsupportedTransformersVersion(
            f"transformers {version}: kernel_loader cannot hook this release: "
            + "; ".join(f"{s.name}: {s.detail}" for s in missing) + f" (tested: {tested_window()})")
    newest = max(Version(v) for v in TESTED_TRANSFORMERS)
    if Version(version) > newest and Version(version).release[:2] != newest.release[:2]:
        return version, (f"kernel_loader: transformers {version} is newer than the releases the hook is tested on "
                         f"({tested_window()}); its seams match, so the hook is installed")
    return version, None


def status(enabled: bool) -> HookStatus:
    try:
        import transformers
    except ImportError:
        return HookStatus(None, False, False, False, "transformers is not installed")
    version = transformers.__version__
    seams: list[Seam] = []
    try:
        seams = inspect_seams()
        _, warning = check_installable()
    except UnsupportedTransformersVersion as e:
        return HookStatus(version, False, enabled, False, str(e), seams)
    tested = any(version == v or version.startswith(v.rsplit(".", 1)[0] + ".") for v in TESTED_TRANSFORMERS)
    reason = warning or f"seams match; tested on {tested_window()}"
    return HookStatus(version, True, enabled, tested, reason, seams)


# --------------------------------------------------------------------------------------------- model-side wrappers

_installed: dict[str, Callable] = {}
_lock = threading.RLock()
_warned: set[str] = set()


def _body(name: str) -> str:
    return name.split("|", 1)[1] if "|" in name else name


def install(is_kernel: Callable[[str], bool], ensure_loaded: Callable[[str], Any]) -> None:
    """Wrap the two PreTrainedModel methods. ``ensure_loaded(name) -> LoadedKernel`` loads and registers a
    hub-kernel string through the hook (raising in strict mode)."""
    from transformers.modeling_utils import PreTrainedModel

    with _lock:
        if _installed:
            return
        check = PreTrainedModel._check_and_adjust_attn_implementation
        setter = PreTrainedModel.set_attn_implementation

        @functools.wraps(check)
        def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
            if (isinstance(attn_implementation, str) and is_kernel(_body(attn_implementation))
                    and not getattr(self, "_supports_flash_attn", True)):
                loaded = ensure_loaded(attn_implementation)
                if getattr(loaded, "mask_format", "flash") == "flash":
                    key = f"{type(self).__name__}:{attn_implementation}"
                    if key not in _warned:
                        _warned.add(key)
                        warnings.warn(
                            f"kernel_loader: {attn_implementation} -> sdpa for {type(self).__name__}: the model "
                            "declares no flash-attention support (_supports_flash_attn = False; its attention needs "
                            "masks or biases, e.g. a relative position bias, that a flash kernel does not take)",
                            stacklevel=3)
                    return check(self, "sdpa", *args, **kwargs)
                return attn_implementation  # registered with an sdpa-format mask: what this model builds
            return check(self, attn_implementation, *args, **kwargs)

        @functools.wraps(setter)
        def set_attn_implementation(self, attn_implementation, *args, **kwargs):
            if isinstance(attn_implementation, dict):
                for value in _strings(attn_implementation):
                    if is_kernel(_body(value)):
                        ensure_loaded(value)
            return setter(self, attn_implementation, *args, **kwargs)

        _installed.update(check=check, setter=setter)
        PreTrainedModel._check_and_adjust_attn_implementation = _check_and_adjust_attn_implementation
        PreTrainedModel.set_attn_implementation = set_attn_implementation


def uninstall() -> None:
    from transformers.modeling_utils import PreTrainedModel

    with _lock:
        if not _installed:
            return
        PreTrainedModel._check_and_adjust_attn_implementation = _installed["check"]
        PreTrainedModel.set_attn_implementation = _installed["setter"]
        _installed.clear()


def _strings(mapping: dict):
    for value in mapping.values():
        if isinstance(value, dict):
            yield from _strings(value)
        elif isinstance(value, str):
            yield value
