"""Per-call fallbacks say why once: one warning per (kernel, reason), not one per layer and step."""

from __future__ import annotations

import warnings

_warned: set[str] = set()


def once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"kernel_loader: {message}; using sdpa for such calls", stacklevel=3)


def forget_warnings() -> None:
    """Show every per-call fallback reason again (kernel_loader.api.clear_cache)."""
    _warned.clear()
