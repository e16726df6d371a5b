"""Bad input: a ValueError naming the argument, raised before anything is read or written."""

import pytest
import torch

import paged_attention as pa


def _setup(nblocks=4, bs=16, hk=2, hq=4, d=64, nseq=2, dtype=torch.float16):
    kc = torch.zeros(nblocks, hk, d // 8, bs, 8, dtype=dtype)
    vc = torch.zeros(nblocks, hk, d, bs, dtype=dtype)
    q = torch.randn(nseq, hq, d).to(dtype)
    out = torch.empty_like(q)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)[:nseq]
    sl = torch.tensor([20, 30], dtype=torch.int32)[:nseq]
    return kc, vc, q, out, bt, sl


def _v1(kc, vc, q, out, bt, sl, *, hk=2, bs=16, max_len=None, kv="auto", alibi=None):
    pa.paged_attention_v1(out, q, kc, vc, hk, 0.1, bt, sl, bs, max_len if max_len is not None else int(sl.max()),
                          alibi, kv, 1.0, 1.0)


@pytest.mark.parametrize("entry,match", [(4, r"block_tables\[1, 1\] = 4 is out of range.*4 blocks"),
                                         (-1, r"block_tables\[1, 1\] = -1 is out of range"),
                                         (10**6, r"out of range")])
def test_block_table_entries_out_of_range(entry, match):
    kc, vc, q, out, bt, sl = _setup()
    bt[1, 1] = entry
    poison = out.clone()
    with pytest.raises(ValueError, match=match):
        _v1(kc, vc, q, out, bt, sl)
    assert torch.equal(out.view(torch.int16), poison.view(torch.int16))  # nothing written


def test_unused_table_entries_are_padding_not_errors():
    kc, vc, q, out, bt, sl = _setup()
    sl[0] = 16  # needs one block; entry [0, 1] is padding
    bt[0, 1] = -1
    _v1(kc, vc, q, out, bt, sl)


def test_seq_len_longer_than_table():
    kc, vc, q, out, bt, sl = _setup()
    sl[1] = 33
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = 33 is longer than its block table covers \(2 blocks"):
        _v1(kc, vc, q, out, bt, sl)
    sl[1] = -2
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = -2 is negative"):
        _v1(kc, vc, q, out, bt, sl)


def test_max_seq_len_smaller_than_seq_lens():
    kc, vc, q, out, bt, sl = _setup()
    with pytest.raises(ValueError, match="max_seq_len=10 is smaller than max"):
        _v1(kc, vc, q, out, bt, sl, max_len=10)


def test_slot_mapping_past_the_cache_and_duplicates():
    kc, vc, *_ = _setup()
    key = torch.randn(3, 2, 64).half()
    before = kc.clone()
    with pytest.raises(ValueError, match=r"slot_mapping\[2\] = 64 is past the cache: it has 64 slots"):
        pa.reshape_and_cache(key, key, kc, vc, torch.tensor([0, 5, 64]), "auto", 1.0, 1.0)
    with pytest.raises(ValueError, match="writes slot 5 more than once"):
        pa.reshape_and_cache(key, key, kc, vc, torch.tensor([5, 1, 5]), "auto", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"slot_mapping must be \[num_tokens=3\]"):
        pa.reshape_and_cache(key, key, kc, vc, torch.tensor([5, 1]), "auto", 1.0, 1.0)
    assert torch.equal(kc, before)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(q=a["q"].float(), out=a["out"].float()), "with kv_cache_dtype='auto' they must match"),
    (lambda a: a.update(out=a["out"][:, :2]), "out must match query"),
    (lambda a: a.update(hk=3), "num_kv_heads=3 but the cache holds 2"),
    (lambda a: a.update(q=torch.randn(2, 4, 32).half(), out=torch.empty(2, 4, 32).half()), "head_size 32 does not match"),
    (lambda a: a.update(bs=8), "block_size=8 but the caches have block_size 16"),
    (lambda a: a.update(kv="fp8"), "needs key_cache stored as torch.uint8"),
    (lambda a: a.update(kv="int4"), "kv_cache_dtype 'int4' is not supported"),
    (lambda a: a.update(bt=a["bt"].float()), "block_tables must be int32"),
    (lambda a: a.update(sl=a["sl"][:1]), r"seq_lens must be \[num_seqs=2\]"),
    (lambda a: a.update(vc=torch.zeros(4, 2, 64, 8).half()), "value_cache shape"),
    (lambda a: a.update(alibi=torch.ones(3)), r"alibi_slopes must be a float tensor \[num_heads=4\]"),
])
def test_mismatched_dtypes_and_shapes(mutate, match):
    kc, vc, q, out, bt, sl = _setup()
    a = dict(kc=kc, vc=vc, q=q, out=out, bt=bt, sl=sl, hk=2, bs=16, kv="auto", alibi=None)
    mutate(a)
    with pytest.raises(ValueError, match=match):
        pa.paged_attention_v1(a["out"], a["q"], a["kc"], a["vc"], a["hk"], 0.1, a["bt"], a["sl"], a["bs"], 30,
                              a["alibi"], a["kv"], 1.0, 1.0)


def test_v2_scratch_too_small_and_bad_block_mapping():
    kc, vc, q, out, bt, sl = _setup()
    with pytest.raises(ValueError, match="max_num_partitions>=1"):
        pa.paged_attention_v2(out, torch.empty(2, 4, 0), torch.empty(2, 4, 0), torch.empty(2, 4, 0, 64), q, kc, vc,
                              2, 0.1, bt, sl, 16, 30, None, "auto", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"block_mapping\[1\] destination block 9 is out of range"):
        pa.copy_blocks([kc], [vc], torch.tensor([[0, 1], [1, 9]]))
    with pytest.raises(ValueError, match="source block -1"):
        pa.swap_blocks(kc, kc.clone(), torch.tensor([[-1, 0]]))
    with pytest.raises(NotImplementedError, match="block-sparse"):
        pa.paged_attention_v1(out, q, kc, vc, 2, 0.1, bt, sl, 16, 30, None, "auto", 1.0, 1.0, 0, 1)


def test_varlen_bad_cu_seqlens_and_query_longer_than_kv():
    kc = torch.zeros(4, 16, 2, 64)
    vc = torch.zeros_like(kc)
    q = torch.randn(5, 4, 64)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q must start at 0"):
        pa.paged_attention_varlen(torch.empty_like(q), q, kc, vc, torch.tensor([0, 3, 4], dtype=torch.int32),
                                  torch.tensor([10, 10], dtype=torch.int32), bt, 0.1)
    with pytest.raises(ValueError, match=r"sequence 1 has 2 query tokens but seq_lens\[1\] = 1"):
        pa.paged_attention_varlen(torch.empty_like(q), q, kc, vc, torch.tensor([0, 3, 5], dtype=torch.int32),
                                  torch.tensor([10, 1], dtype=torch.int32), bt, 0.1)
