"""kernel_loader.adapters.call: the argument contract of one attention call and the reference math of the floor.

The reference math is checked against float64 eager attention built here from the definitions (scores, additive
bias, sinks as an extra logit column, bottom-right causal, windows) on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from kernel_loader.adapters.call import (UnknownAttentionArguments, normalize_paged, packed_reference,
                                          reference_attention, score_modifiers)


def _eager64(q, k, v, scale, allowed, bias=None, sinks=None):
    q, k, v = q.double(), k.double(), v.double()
    if k.shape[1] != q.shape[1]:
        r = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
    s = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias.double()
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.double().view(1, -1, 1, 1).expand(*s.shape[:3], 1)], -1)
        return (torch.softmax(s, -1)[..., :-1] @ v)
    return torch.softmax(s, -1) @ v


def _bottom_right(sq, sk, window=None):
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None]
    ok = j <= i
    if window is not None:
        ok &= j >= i - window
    return ok


@pytest.mark.parametrize("sinks", [False, True])
@pytest.mark.parametrize("sq,sk", [(7, 7), (3, 9)])
def test_reference_with_bias_and_sinks_matches_float64(sinks, sq, sk):
    g = torch.Generator().manual_seed(sq * 10 + sk)
    q = torch.randn(2, 4, sq, 16, generator=g)
    k = torch.randn(2, 2, sk, 16, generator=g)
    v = torch.randn(2, 2, sk, 16, generator=g)
    bias = torch.randn(1, 4, sq, sk, generator=g) * 3
    s = torch.randn(4, generator=g) if sinks else None
    got = reference_attention(q, k, v, scale=0.25, causal=True, window=(2, 0), bias=bias, sinks=s)
    want = _eager64(q, k, v, 0.25, _bottom_right(sq, sk, window=2)[None, None], bias, s)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    # the bias matters: without it the result is different
    assert (reference_attention(q, k, v, scale=0.25, causal=True, window=(2, 0), sinks=s).double()
            - want).abs().max() > 1e-2


def test_packed_reference_keeps_sequences_apart():
    g = torch.Generator().manual_seed(0)
    lens_q, lens_k = [3, 1, 5], [3, 4, 9]  # prefill, decode against a cache, chunked prefill
    cu_q = torch.tensor([0, 3, 4, 9])
    cu_k = torch.tensor([0, 3, 7, 16])
    q = torch.randn(1, 4, 9, 8, generator=g)
    k = torch.randn(1, 2, 16, 8, generator=g)
    v = torch.randn(1, 2, 16, 8, generator=g)
    got = packed_reference(q, k, v, cu_q, cu_k, scale=0.3, causal=True)
    for i, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        a, c = int(cu_q[i]), int(cu_k[i])
        want = _eager64(q[:, :, a:a + lq], k[:, :, c:c + lk], v[:, :, c:c + lk], 0.3, _bottom_right(lq, lk))
        torch.testing.assert_close(got[:, :, a:a + lq].double(), want, atol=2e-5, rtol=2e-5)


class _Layer(torch.nn.Module):
    layer_idx = 0


def test_unknown_arguments_are_named():
    with pytest.raises(UnknownAttentionArguments, match=r"_Layer passed attention_temperature=Tensor\(4,\)"):
        score_modifiers("org/k", _Layer(), {"attention_temperature": torch.ones(4), "position_ids": None})
    # None-valued and inert arguments are fine; score modifiers are taken out and named
    kw = {"position_ids": torch.arange(3), "use_cache": True, "position_bias": torch.zeros(1, 2, 3, 3),
          "something_new": None}
    mods = score_modifiers("org/k", _Layer(), kw)
    assert mods.any and "position_bias" in mods.reasons[0] and "position_bias" not in kw


def test_per_layer_lengths_without_a_cache_are_refused():
    kw = {"cu_seq_lens_k": {"full_attention": torch.tensor([0, 3])}, "max_length_k": {"full_attention": 3}}
    k = torch.zeros(1, 2, 3, 8)
    with pytest.raises(UnknownAttentionArguments, match="per-layer-type dict.*no paged cache"):
        normalize_paged("org/k", _Layer(), k, k, kw)
    with pytest.raises(UnknownAttentionArguments, match="DynamicCache is not a paged cache"):
        normalize_paged("org/k", _Layer(), k, k, dict(kw, cache=type("DynamicCache", (), {})()))
    # the layer already selected its lengths (transformers 5.24): accepted as is
    done = {"cu_seq_lens_k": torch.tensor([0, 3]), "max_length_k": 3}
    assert normalize_paged("org/k", _Layer(), k, k, done)[0] is k
