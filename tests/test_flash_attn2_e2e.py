"""The compiled CPU flash-attn2 variant end to end: built with `kernel-loader build`, published to the local Hub,
loaded by the stock `kernels` client and by kernel_loader, used through sdpa_like in a plain torch model."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from reference import attention_ref
from tiny_kernels import FLASH_ATTN2_DIR, REPO_ROOT

import kernel_loader
from kernel_loader.api import clear_cache
from kernel_loader.system import detect


@pytest.fixture
def fa2(published_flash_attn2):
    clear_cache()
    loaded = kernel_loader.load(published_flash_attn2, strict=True)
    yield loaded
    clear_cache()


def rand(*shape, dtype=torch.float32, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    return torch.randn(*shape, generator=g).to(dtype)


def test_build_metadata_and_variant_name(built_flash_attn2):
    from kernels._rust import Metadata

    assert built_flash_attn2.variant == detect().variant
    meta = Metadata.read_from_file(built_flash_attn2.path / "metadata.json")
    assert meta.name.python_name == "flash_attn2" and meta.version == 1
    assert meta.id == built_flash_attn2.ops_id and meta.id.startswith("_flash_attn2_cpu_")
    assert meta.digest is not None and (built_flash_attn2.library.name in meta.digest.files)
    assert not list(built_flash_attn2.path.rglob("*.pyc"))
    # Error messages name sources relative to the kernel repo; no build-machine path is published.
    blob = built_flash_attn2.library.read_bytes()
    assert b"csrc/cpu/flash_fwd_cpu.cpp" in blob
    for path in (FLASH_ATTN2_DIR.resolve(), REPO_ROOT.resolve()):
        assert str(path).encode() not in blob


def test_stock_kernels_client_loads_published_repo(published_flash_attn2):
    import kernels

    decisions = kernels.get_kernel_variants(published_flash_attn2, version=1)
    assert isinstance(decisions[0], kernels.VariantAccepted)
    assert decisions[0].variant.variant_str == detect().variant
    mod = kernels.get_kernel(published_flash_attn2, version=1, trust_remote_code=True)
    q, k, v = rand(1, 33, 4, 64, seed=1), rand(1, 33, 2, 64, seed=2), rand(1, 33, 2, 64, seed=3)
    out = mod.flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_ref(q, k, v, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_loader_picks_compiled_variant(fa2):
    assert fa2.variant == detect().variant and fa2.fallback is None
    assert fa2.module.__name__.startswith("_flash_attn2_cpu_") and fa2.mask_format == "flash"
    assert (fa2.path / "metadata.json").is_file()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("causal, window, softcap", [(False, (-1, -1), 0.0), (True, (-1, -1), 0.0),
                                                     (True, (16, 0), 0.0), (False, (8, 8), 30.0)])
def test_kernel_matches_float64(fa2, dtype, tol, causal, window, softcap):
    q = rand(2, 70, 8, 64, dtype=dtype)
    k, v = rand(2, 90, 2, 64, dtype=dtype), rand(2, 90, 2, 64, dtype=dtype)
    out, lse, *_ = fa2.module.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                              return_softmax_lse=True)
    ref, ref_lse = attention_ref(q, k, v, causal=causal, window=window, softcap=softcap)
    assert out.dtype == dtype and not out.isnan().any()
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < tol, f"relative error {rel:.2e}"
    finite = ref_lse.isfinite()
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=1e-3, rtol=1e-3)


class Encoder(torch.nn.Module):
    """A bidirectional encoder block with no RoPE: the plain-torch user's model, attention pluggable."""

    def __init__(self, dim=128, heads=8, kv_heads=2, attention=F.scaled_dot_product_attention):
        super().__init__()
        self.h, self.kv, self.d = heads, kv_heads, dim // heads
        self.q = torch.nn.Linear(dim, dim)
        self.kvp = torch.nn.Linear(dim, 2 * kv_heads * self.d)
        self.o = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.attention = attention

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.h, self.d).transpose(1, 2)
        k, v = self.kvp(x).view(b, s, 2, self.kv, self.d).permute(2, 0, 3, 1, 4)
        a = self.attention(q, k, v, enable_gqa=True)
        return self.norm(x + self.o(a.transpose(1, 2).reshape(b, s, -1)))


def test_sdpa_like_in_plain_torch_encoder(published_flash_attn2):
    clear_cache()
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(3, 57, 128)
    with torch.no_grad():
        ref = model(x)
        model.attention = kernel_loader.sdpa_like(published_flash_attn2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the kernel itself must run: no per-call fallback warning
            out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_sdpa_like_per_call_fallbacks_keep_sdpa_numbers(published_flash_attn2):
    clear_cache()
    attn = kernel_loader.sdpa_like(published_flash_attn2)
    q, k, v = rand(2, 4, 16, 64, seed=4), rand(2, 4, 16, 64, seed=5), rand(2, 4, 16, 64, seed=6)
    mask = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(7)) > 0.3
    cases = {
        "explicit attn_mask": dict(attn_mask=mask),
        "dtype torch.float16": dict(cast=torch.float16),
        "head dim 12": dict(head_dim=12),
        "is_causal with Sq != Sk": dict(is_causal=True, short_q=True),
    }
    for fragment, case in cases.items():
        qq, kk, vv = q, k, v
        if "cast" in case:
            qq, kk, vv = (t.to(case["cast"]) for t in (q, k, v))
        if "head_dim" in case:
            qq, kk, vv = (t[..., : case["head_dim"]].contiguous() for t in (q, k, v))
        if case.get("short_q"):
            qq = qq[:, :, :5]
        with pytest.warns(UserWarning, match=fragment.split()[0]):
            out = attn(qq, kk, vv, attn_mask=case.get("attn_mask"), is_causal=case.get("is_causal", False))
        ref = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=case.get("attn_mask"),
                                             is_causal=case.get("is_causal", False))
        torch.testing.assert_close(out, ref)


def test_transformers_signature_with_padding(fa2):
    """The AttentionInterface function on a left-padded batch equals the float64 reference on real tokens."""
    b, hq, hk, s, d = 3, 8, 2, 40, 64
    q, k, v = rand(b, hq, s, d), rand(b, hk, s, d), rand(b, hk, s, d)
    pad = torch.ones(b, s, dtype=torch.long)
    pad[1, :7] = 0
    pad[2, :31] = 0
    module = torch.nn.Module()
    module.is_causal = True
    out, weights = fa2.attention(module, q, k, v, pad, scaling=d ** -0.5)
    assert weights is None and out.shape == (b, s, hq, d)
    ref, _ = attention_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, key_padding=pad)
    real = pad.bool()
    torch.testing.assert_close(out[real].double(), ref[real], atol=2e-5, rtol=2e-5)
    assert (out[~real] == 0).all()
    # Decode step (one new query per row) against the padded cache.
    q1 = rand(b, hq, 1, d)
    out1, _ = fa2.attention(module, q1, k, v, pad, scaling=d ** -0.5)
    ref1, _ = attention_ref(q1.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, key_padding=pad)
    torch.testing.assert_close(out1.double(), ref1, atol=2e-5, rtol=2e-5)


def test_output_attentions_goes_to_sdpa_for_that_call(fa2):
    q, k, v = rand(1, 4, 9, 32, seed=8), rand(1, 4, 9, 32, seed=9), rand(1, 4, 9, 32, seed=10)
    module = torch.nn.Module()
    module.is_causal = False
    with pytest.warns(UserWarning, match="output_attentions"):
        out, _ = fa2.attention(module, q, k, v, None, output_attentions=True)
    torch.testing.assert_close(out.transpose(1, 2), F.scaled_dot_product_attention(q, k, v))


def test_packed_sequences_from_position_ids(fa2):
    """Padding-free batch: three sequences back to back in batch 1, position ids restart at each; no mask."""
    lens = [5, 11, 8]
    s, hq, hk, d = sum(lens), 4, 2, 32
    q, k, v = rand(1, hq, s, d), rand(1, hk, s, d), rand(1, hk, s, d)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = fa2.attention(module, q, k, v, None, position_ids=pos)
    with torch.inference_mode():  # generate() runs here: inference tensors have no version counter
        pos_inf, q_inf, k_inf, v_inf = pos.clone(), q.clone(), k.clone(), v.clone()
        out_inf, _ = fa2.attention(module, q_inf, k_inf, v_inf, None, position_ids=pos_inf)
    torch.testing.assert_close(out_inf, out)
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        ref, _ = attention_ref(q[:, :, sl].transpose(1, 2), k[:, :, sl].transpose(1, 2),
                               v[:, :, sl].transpose(1, 2), causal=True)
        torch.testing.assert_close(out[:, sl].double(), ref, atol=2e-5, rtol=2e-5)
        start += n


def test_packing_found_once_per_position_ids_tensor(fa2):
    """Every layer passes the same position_ids: the restarts are found once (one device sync per forward), and an
    in-place change to the tensor is seen on the next call (the memo keys on the tensor and its version)."""
    from kernel_loader import adapters

    hq, d = 2, 32
    pos = torch.cat([torch.arange(6), torch.arange(10)])[None]
    q, k, v = rand(1, hq, 16, d), rand(1, hq, 16, d), rand(1, hq, 16, d)
    module = torch.nn.Module()
    module.is_causal = True
    first = adapters.flash._packing(pos)
    assert first[0].tolist() == [0, 6, 16] and first[1] == 10
    assert adapters.flash._packing(pos) is first  # remembered: no second search
    out_packed, _ = fa2.attention(module, q, k, v, None, position_ids=pos)
    pos.copy_(torch.arange(16)[None])  # now one sequence: the memo must notice
    assert adapters.flash._packing(pos) is None
    out_one, _ = fa2.attention(module, q, k, v, None, position_ids=pos)
    ref, _ = attention_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    torch.testing.assert_close(out_one.double(), ref, atol=2e-5, rtol=2e-5)
    assert not torch.allclose(out_packed[:, 6:], out_one[:, 6:])  # the packed call did split the sequences
