"""Shared fixtures: an isolated Hub client environment, a real local Hub (olah), and tiny test kernels.

How the client side is pointed at the local Hub (the choice, and why):
huggingface_hub copies HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, ... into
``huggingface_hub.constants`` when it is first imported, and kernels copies KERNELS_CACHE into
``kernels.hf_hub.CACHE_DIR`` the same way. Patching those module attributes after the fact is fragile
(several modules keep their own copies), so this file sets the environment *at import time*, before any test
module imports huggingface_hub, kernels or transformers:

- HF_ENDPOINT = http://127.0.0.1:<port>, where <port> is reserved now and the session fixture ``local_hub``
  starts olah on exactly that port (lazily, only when a test asks for it);
- HF_HOME, HF_HUB_CACHE, KERNELS_CACHE = fresh per-session temp dirs, so tests never read or write the user's
  caches and every session starts cold;
- HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE removed, HF_TOKEN removed (no token is sent to the local Hub),
  telemetry and implicit tokens disabled, progress bars off.

A test that needs offline behaviour should monkeypatch ``huggingface_hub.constants.HF_HUB_OFFLINE``
(that is what huggingface_hub and kernels read at call time). If huggingface_hub was somehow imported before
this file (e.g. by a plugin), ``_sync_constants`` patches the copies it already made.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# ------------------------------------------------------------------ client environment (import time)
# Nothing from kernel_loader is imported above this block: its package may import huggingface_hub.

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="kernel-loader-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)


def _reserve_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = _reserve_port()
HUB_ENDPOINT = f"http://127.0.0.1:{HUB_PORT}"
HUB_ROOT = _SESSION_DIR / "hub"

_ENV = {
    "HF_ENDPOINT": HUB_ENDPOINT,
    "HF_HOME": str(_SESSION_DIR / "hf_home"),
    "HF_HUB_CACHE": str(_SESSION_DIR / "hf_home" / "hub"),
    "KERNELS_CACHE": str(_SESSION_DIR / "kernels_cache"),
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
}
os.environ.update(_ENV)
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
             "HUGGINGFACE_HUB_CACHE", "LOCAL_KERNELS"):
    os.environ.pop(_var, None)
# Tests check the kernel path itself, on any machine: no shape class is routed to SDPA on purpose
# (kernel_loader/adapters/routing.py) unless a test turns routing on (tests/test_bench.py does).
os.environ.setdefault("KERNEL_LOADER_ROUTING", "off")
# Triton kernels are checked on CPU tensors through Triton's interpreter where there is no GPU. It must be on before
# anything imports triton (triton's own @jit library functions are fixed at import), so it is set here, first.
if "TRITON_INTERPRET" not in os.environ and not os.path.exists("/dev/nvidia0"):
    os.environ["TRITON_INTERPRET"] = "1"


def _sync_constants(endpoint: str = HUB_ENDPOINT) -> None:
    """Patch the copies huggingface_hub/kernels made if they were imported before this file."""
    os.environ["HF_ENDPOINT"] = endpoint
    if "huggingface_hub.constants" in sys.modules:
        c = sys.modules["huggingface_hub.constants"]
        c.ENDPOINT = endpoint
        c.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        c.HF_HOME = _ENV["HF_HOME"]
        c.HF_HUB_CACHE = c.HUGGINGFACE_HUB_CACHE = _ENV["HF_HUB_CACHE"]
        c.HF_HUB_OFFLINE = False
    if "kernels.hf_hub" in sys.modules:
        sys.modules["kernels.hf_hub"].CACHE_DIR = _ENV["KERNELS_CACHE"]
    if "kernels.install" in sys.modules:
        sys.modules["kernels.install"].CACHE_DIR = _ENV["KERNELS_CACHE"]


_sync_constants()


# ------------------------------------------------------------------ local Hub


@pytest.fixture(scope="session")
def local_hub():
    """A real olah on HUB_PORT serving a per-session root; huggingface_hub already points at it."""
    from kernel_loader.hub import start_local_hub

    try:
        hub = start_local_hub(HUB_ROOT, HUB_PORT)
    except OSError:  # someone took the reserved port since import: use another and re-point the clients
        hub = start_local_hub(HUB_ROOT)
        _sync_constants(hub.endpoint)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def hub_api(local_hub):
    """An ``HfApi`` bound explicitly to the local Hub (no token)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=local_hub.endpoint, token=False)


@pytest.fixture
def hub_publish(local_hub):
    """``hub_publish(build_dir, repo_id, version, **kw) -> PublishResult`` into the session Hub."""
    from kernel_loader.publish import publish_local

    def publish(build_dir, repo_id: str, version: int = 1, **kw):
        return publish_local(build_dir, repo_id, local_hub.root, version, **kw)

    return publish


@pytest.fixture
def fresh_caches(tmp_path, monkeypatch):
    """Point the download caches at empty per-test dirs (for tests that must start cold)."""
    import huggingface_hub.constants as c
    import kernels.hf_hub

    hub_cache, kernels_cache = tmp_path / "hf_cache", tmp_path / "kernels_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("KERNELS_CACHE", str(kernels_cache))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(kernels.hf_hub, "CACHE_DIR", str(kernels_cache))
    if "kernels.install" in sys.modules:
        monkeypatch.setattr(sys.modules["kernels.install"], "CACHE_DIR", str(kernels_cache))
    return hub_cache, kernels_cache


# ------------------------------------------------------------------ tiny test kernels

from tiny_kernels import FLASH_ATTN2_DIR, FLASH_ATTN2_REPO, TINY_VARIANT, make_tiny_kernel  # noqa: E402,F401


@pytest.fixture
def tiny_kernel(tmp_path):
    """Factory: ``tiny_kernel(variant=..., value=...) -> variant dir``; all variants share one build dir,
    available as ``tiny_kernel.build_dir``."""
    build_dir = tmp_path / "tiny-build"

    def factory(**kw) -> Path:
        return make_tiny_kernel(build_dir, **kw)

    factory.build_dir = build_dir
    return factory


# ------------------------------------------------------------------ the real compiled kernel



@pytest.fixture(scope="session")
def built_flash_attn2(tmp_path_factory):
    """The CPU flash-attn2 variant compiled once per session (ninja reuses objects between sessions) into a
    session folder laid out like a kernel repo (``<dir>/build/<variant>/``)."""
    from kernel_loader.build import build_variant

    out = tmp_path_factory.mktemp("flash-attn2-build")
    built = build_variant(FLASH_ATTN2_DIR, out_dir=out / "build", progress=lambda _msg: None)
    return built


@pytest.fixture(scope="session")
def published_flash_attn2(local_hub, built_flash_attn2, session_env_trust):
    """Repo id of the real CPU flash-attn2 kernel published as v1 on the session's local Hub."""
    from kernel_loader.publish import publish_local

    # allow_dirty: the session builds the working tree, which is dirty whenever someone is editing it.
    publish_local(built_flash_attn2.path.parent.parent, FLASH_ATTN2_REPO, local_hub.root, 1, allow_dirty=True)
    return FLASH_ATTN2_REPO


@pytest.fixture(scope="session")
def session_env_trust():
    """The local Hub has no trusted-publisher flag: trust the demo org for the whole session."""
    old = os.environ.get("KERNEL_LOADER_TRUST")
    os.environ["KERNEL_LOADER_TRUST"] = "kernels-community" + (f",{old}" if old else "")
    yield
    if old is None:
        os.environ.pop("KERNEL_LOADER_TRUST", None)
    else:
        os.environ["KERNEL_LOADER_TRUST"] = old
