"""The fallback policy: a kernel that cannot be had degrades to PyTorch SDPA with a one-line reason.

Whole-kernel failures (no variant, repo or revision missing, Hub unreachable with an empty cache, digest
mismatch, import error, GPU arch not in the build, untrusted publisher) raise :class:`KernelUnavailable`
inside the loader; :func:`kernel_loader.load` turns it into ``LoadedKernel.fallback`` plus one warning, or
re-raises it when strict mode is on (``strict=True`` or ``KERNEL_LOADER_STRICT=1``).

Per-call fallbacks (an input the kernel cannot take: dtype, head dim, ``output_attentions``, an arbitrary mask)
are decided in :mod:`kernel_loader.adapters` and never warn more than once per reason.
"""

from __future__ import annotations

import logging
import os
import warnings

logger = logging.getLogger("kernel_loader")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class KernelUnavailable(RuntimeError):
    """A kernel could not be resolved, fetched, verified or imported. ``reason`` is one line."""

    def __init__(self, reason: str, *, stage: str):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage  # resolve | trust | fetch | verify | import | adapt


class KernelFallbackWarning(UserWarning):
    """Emitted once per spec when kernel_loader uses SDPA instead of the requested kernel."""


def env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def is_strict(strict: bool | None) -> bool:
    """An explicit argument wins; otherwise KERNEL_LOADER_STRICT decides."""
    return env_flag("KERNEL_LOADER_STRICT") if strict is None else bool(strict)


def warn_fallback(spec: str, reason: str) -> None:
    # One channel only (warnings), so the line is not printed twice; filters can silence or escalate it.
    warnings.warn(f"kernel_loader: {spec} -> sdpa: {reason}", KernelFallbackWarning, stacklevel=3)
