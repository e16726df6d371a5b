"""The errors every layer raises: one :class:`KernelUnavailable` for a kernel that cannot be had, with the stage
of the path where it failed, and the warning shown when SDPA is used instead.

Whole-kernel failures (no variant, repo or revision missing, Hub unreachable with an empty cache, digest mismatch,
import error, GPU arch not in the build, untrusted publisher, wrong selftest numbers) raise ``KernelUnavailable``;
:func:`kernel_loader.load` turns it into ``LoadedKernel.fallback`` plus one warning unless strict mode is on.
"""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["resolve", "trust", "fetch", "verify", "import", "adapt", "selftest", "chain"]
STAGES: tuple[str, ...] = get_args(Stage)


class KernelUnavailable(RuntimeError):
    """A kernel could not be resolved, fetched, verified, imported, adapted or self-tested. ``reason`` is one
    line; ``stage`` is one of :data:`STAGES`."""

    def __init__(self, reason: str, *, stage: Stage):
        if stage not in STAGES:
            raise ValueError(f"KernelUnavailable stage {stage!r} is not one of {', '.join(STAGES)}")
        super().__init__(reason)
        self.reason = reason
        self.stage: Stage = stage


class KernelFallbackWarning(UserWarning):
    """Emitted once per spec when kernel_loader uses SDPA instead of the requested kernel."""
