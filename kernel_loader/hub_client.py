"""The Hub as a client sees it: endpoint, offline switch, and the two ways a request can fail to get an answer.

Requests themselves go through :mod:`kernel_loader.hubio` (bounded reads, downloads into paths we build) and the
per-repo questions through :mod:`kernel_loader.hubrepo`. A request that cannot reach the Hub (connection refused,
DNS, timeouts, 502-504, 429 after retries) raises :class:`HubUnreachable`, which callers answer from the cache; a
server error (500, ...) raises :class:`HubServerError`, which the cache may still answer but whose reason, on a
miss, is the Hub's own error; a missing repo or revision, or a local cache write failure, is a
:class:`KernelUnavailable`.
"""

from __future__ import annotations

LIBRARY_NAME = "kernel-loader"


class HubUnreachable(Exception):
    """The Hub could not be reached (the message says how); the cache may still answer."""


class HubServerError(HubUnreachable):
    """The Hub answered with a server error: the cache may still answer, but a miss names this ``reason``
    (not connectivity, no offline advice)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT
