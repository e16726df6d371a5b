"""Fallback chains: ``load("org/a,org/b")`` tries each kernel in order, then SDPA.

On this CPU machine flash-attn3 (a noarch torch-cuda variant, metadata archs ["9.0"]) is refused at resolve time,
and the chain goes on to flash-attn2's compiled CPU variant, which then computes attention."""

from pathlib import Path

import pytest
import torch

from kernel_loader import api
from kernel_loader.errors import KernelUnavailable

from reference import attention_ref

FA3_DIR = Path(__file__).resolve().parents[1] / "kernel_repos" / "flash-attn3"
FA3_REPO = "kernels-community/flash-attn3"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published_flash_attn3(local_hub, session_env_trust, tmp_path_factory):
    from kernel_loader.build import build_variant
    from kernel_loader.publish import publish_local

    out = tmp_path_factory.mktemp("flash-attn3-build")
    built = build_variant(FA3_DIR, out_dir=out / "build", variant="torch-cuda", progress=lambda _m: None)
    assert built.archs == ("9.0",)
    shared = built.path / "_triton_fwd.py"  # a symlink in the source tree: the variant holds the file itself
    assert shared.is_file() and not shared.is_symlink()
    publish_local(built.path.parent.parent, FA3_REPO, local_hub.root, 1, allow_dirty=True)
    return FA3_REPO


def test_chain_skips_flash_attn3_and_loads_flash_attn2(published_flash_attn3, published_flash_attn2, fresh_caches):
    api.clear_cache()
    with pytest.warns(UserWarning, match="flash-attn3"):
        alone = api.load(published_flash_attn3)
    assert alone.fallback is not None and "torch-cuda" in alone.fallback

    for chain in (f"{published_flash_attn3},{published_flash_attn2}", [published_flash_attn3, published_flash_attn2]):
        api.clear_cache()
        loaded = api.load(chain)
        assert loaded.fallback is None
        assert loaded.repo_id == published_flash_attn2 and loaded.variant.endswith("cpu-x86_64-linux")
        gen = torch.Generator().manual_seed(3)
        q, k, v = (torch.randn(1, 4, 50, 64, generator=gen) for _ in range(3))  # (B, H, S, D)
        out = loaded.sdpa(q, k, v, is_causal=True)
        ref, _ = attention_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        torch.testing.assert_close(out.double(), ref.transpose(1, 2), atol=1e-4, rtol=1e-4)


def test_chain_of_unavailable_kernels_falls_back_with_every_reason(published_flash_attn3, fresh_caches):
    api.clear_cache()
    chain = f"{published_flash_attn3},kernels-community/no-such-kernel"
    with pytest.warns(UserWarning):
        loaded = api.load(chain)
    assert loaded.fallback.startswith("no kernel of the chain loaded")
    assert published_flash_attn3 in loaded.fallback and "no-such-kernel" in loaded.fallback
    api.clear_cache()
    with pytest.raises(KernelUnavailable, match="no-such-kernel"):
        api.load(chain, strict=True)


def test_chain_syntax_errors_raise():
    with pytest.raises(ValueError, match="empty link"):
        api.load("kernels-community/a,,kernels-community/b")
    with pytest.raises(ValueError):
        api.load("kernels-community/a,not a spec")
