"""``kernel_loader.offline()``: the scoped form of ``HF_HUB_OFFLINE=1``.

huggingface_hub copies HF_HUB_OFFLINE into ``huggingface_hub.constants.HF_HUB_OFFLINE`` at import and reads that
attribute at call time (``constants.is_offline_mode()``, consulted by the HTTP event hook that every Hub request goes
through, and by ``snapshot_download``/``hf_hub_download``), so setting both the attribute and the environment variable
switches our resolver, huggingface_hub and child processes alike. The switch is process-wide (not per thread):
other threads in the process are offline too until the block ends.
"""

from __future__ import annotations

import contextlib
import os
import threading

_guard = threading.Lock()


@contextlib.contextmanager
def offline(enabled: bool = True):
    """Within the block, resolve only from the cache and open no socket to the Hub (``enabled=False``: the
    opposite, online even if HF_HUB_OFFLINE is set). Restores the previous state on exit; nests."""
    from huggingface_hub import constants

    with _guard:
        old_env = os.environ.get("HF_HUB_OFFLINE")
        old_const = constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"] = "1" if enabled else "0"
        constants.HF_HUB_OFFLINE = bool(enabled)
    try:
        yield
    finally:
        with _guard:
            constants.HF_HUB_OFFLINE = old_const
            if old_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old_env
