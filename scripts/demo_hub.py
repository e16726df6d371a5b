"""The embedded local Hub the demo and the benchmarks use: build this machine's variants of our kernel repos,
publish them as ``kernels-community/<name>`` v1 to a fresh Hub root, serve it with olah on loopback, and point
this process's Hub clients at it.

The client environment (HF_ENDPOINT, caches, trust) is set *before* anything imports huggingface_hub or kernels
(both copy it into module constants at import), which is why :func:`serve` picks the port first.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ORG = "kernels-community"
# kernel repo folder -> the variant built for a CPU machine (None: the default one for this torch)
CPU_VARIANTS = {"flash-attn2": None, "paged-attention": "torch-cpu", "sliding-window": "torch-cpu"}


@dataclass
class ServedHub:
    endpoint: str
    root: Path
    cache: Path
    published: dict  # repo id -> variants
    hub: object  # kernel_loader.hub.LocalHub

    def stop(self) -> None:
        self.hub.stop()


def client_env(endpoint: str, cache: Path) -> dict[str, str]:
    """What a user process needs to reach the Hub (the demo's user side gets exactly these)."""
    return {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "KERNELS_CACHE": str(cache),
            "KERNEL_LOADER_TRUST": ORG, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def point_clients_here(endpoint: str, cache: Path) -> None:
    """Set this process's client environment; refuses once huggingface_hub is imported (it would not see it)."""
    if "huggingface_hub" in sys.modules and os.environ.get("HF_ENDPOINT") != endpoint:
        raise RuntimeError("huggingface_hub was imported before the local Hub's HF_ENDPOINT was set; "
                           "call demo_hub.serve() before importing kernel_loader.api, kernels or transformers")
    os.environ.update(client_env(endpoint, cache))
    os.environ.pop("HF_HUB_OFFLINE", None)


def build_and_publish(names, root: Path, log=print) -> dict:
    from kernel_loader.build import build_variant
    from kernel_loader.publish import publish_local

    published = {}
    for name in names:
        t = time.perf_counter()
        built = build_variant(ROOT / "kernel_repos" / name, variant=CPU_VARIANTS.get(name),
                              progress=lambda _m: None)
        # allow_dirty: the demo and benchmarks publish whatever the checkout holds
        res = publish_local(built.path.parent.parent, f"{ORG}/{name}", root, 1, allow_dirty=True,
                            variants=[built.variant])
        published[res.repo_id] = res.variants
        log(f"   {res.repo_id} v1 <- {built.variant} ({time.perf_counter() - t:.1f}s build+publish)")
    return published


@contextmanager
def serve(work: Path, names=("flash-attn2",), *, fresh_cache: bool = True, fresh_hub: bool = True, log=print):
    """Build + publish ``names`` into ``work/hub``, serve it, point this process at it; yields a ServedHub."""
    from kernel_loader.hub import free_port, start_local_hub

    work = Path(work).resolve()
    root, cache = work / "hub", work / "cache"
    if fresh_hub:
        shutil.rmtree(root, ignore_errors=True)
    if fresh_cache:
        shutil.rmtree(cache, ignore_errors=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    point_clients_here(endpoint, cache)
    published = build_and_publish(names, root, log=log)
    hub = start_local_hub(root, port)
    try:
        yield ServedHub(endpoint=endpoint, root=root, cache=cache, published=published, hub=hub)
    finally:
        hub.stop()
