"""The fallback policy: a kernel that cannot be had degrades to PyTorch SDPA with a one-line reason.

Whole-kernel failures raise :class:`kernel_loader.errors.KernelUnavailable` inside the loader;
:func:`kernel_loader.load` turns it into ``LoadedKernel.fallback`` plus one warning, or re-raises it when strict
mode is on (``strict=True`` or ``KERNEL_LOADER_STRICT=1``).

Per-call fallbacks (an input the kernel cannot take: dtype, head dim, ``output_attentions``, an arbitrary mask)
are decided in :mod:`kernel_loader.adapters` and never warn more than once per reason.
"""

from __future__ import annotations

import warnings

from .env import env_flag
from .errors import KernelFallbackWarning


def is_strict(strict: bool | None) -> bool:
    """An explicit argument wins; otherwise KERNEL_LOADER_STRICT decides."""
    return env_flag("KERNEL_LOADER_STRICT") if strict is None else bool(strict)


def warn_fallback(spec: str, reason: str) -> None:
    # One channel only (warnings), so the line is not printed twice; filters can silence or escalate it.
    warnings.warn(f"kernel_loader: {spec} -> sdpa: {reason}", KernelFallbackWarning, stacklevel=3)
