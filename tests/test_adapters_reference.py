"""The per-call SDPA fallback must have exactly the kernel's semantics (bottom-right causal, windows, softcap,
padding, GQA), or a model would change its numbers whenever a call falls back."""

import pytest
import torch

from kernel_loader.adapters import masked_attention

from reference import attention_ref


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (3, 0), (2, 5), (-1, 1)])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("sq, sk, hq, hk", [(7, 7, 4, 4), (3, 11, 4, 2), (9, 9, 6, 1)])
def test_masked_attention_matches_float64(causal, window, softcap, sq, sk, hq, hk):
    torch.manual_seed(hash((causal, window, softcap, sq, sk)) % 2**31)
    b, d = 2, 16
    q = torch.randn(b, sq, hq, d)
    k = torch.randn(b, sk, hk, d)
    v = torch.randn(b, sk, hk, d)
    pad = torch.ones(b, sk, dtype=torch.bool)
    pad[1, : sk // 3] = False  # left padding in the second row
    ref, _ = attention_ref(q, k, v, causal=causal, window=window, softcap=softcap, key_padding=pad)
    out = masked_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=d ** -0.5,
                           causal=causal, window=window, softcap=softcap, key_padding=pad).transpose(1, 2)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_flash_visible_pairs_counts_what_the_visibility_mask_admits():
    """The benchmarks' FLOP count (closed form) against the mask the reference attention uses, on random shapes."""
    import random

    from kernel_loader.reference import flash_visibility, flash_visible_pairs

    rng = random.Random(7)
    for _ in range(200):
        sq, sk = rng.randint(1, 48), rng.randint(1, 48)
        causal, window = rng.random() < 0.5, (rng.randint(-1, 12), rng.randint(-1, 12))
        want = int(flash_visibility(sq, sk, causal=causal, window=window).sum())
        assert flash_visible_pairs(sq, sk, causal=causal, window=window) == want, (sq, sk, causal, window)
