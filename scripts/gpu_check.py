#!/usr/bin/env python3
"""One command for the GPU run of the precompiled (AOT) kernels: builds nothing, checks and measures built variants.

    python scripts/gpu_check.py [--variants .gpu] [--out $OUT] [--dry-run]

``--variants``: a folder holding built flash-attn2 variant folders (as ``kernel-loader build`` writes them): every
AOT variant (``cubins/table.json`` inside) and the noarch Triton one (``torch-cuda``). Each is imported straight
from its folder (no kernels/olah needed on the GPU machine). sliding-window and flash-attn3 variants under the same
folder are found by their metadata name. Per flash-attn2 and flash-attn3 variant (flash-attn3 through its own API:
``page_table``, lse by ``return_attn_probs``; its AOT dense forward is the TMA-descriptor cubin, its JIT one the
Gluon kernel):

- correctness in float64 of every op (dense, varlen, kv cache, paged kv cache forward; dense and varlen backward)
  on fresh random inputs over head dims, dtypes, causal/window/softcap, GQA; the caching allocator is filled with
  NaN before each call, so an output element a kernel forgets to write shows up;
- host time per call (decode step and a short prefill): AOT vs Triton JIT vs torch SDPA;
- first-call latency in a fresh process (AOT: module load; JIT: compile with an empty Triton cache);
- CUDA-graph capture and replay of a paged decode step (checked against the reference after each replay);
- torch.compile(fullgraph=True) of a function calling flash_attn_func;
- flash-attn3 also: dense forwards through non-contiguous q/k/v (a packed qkv: TMA descriptors with strides
  other than the contiguous ones), a misaligned input (copied before the cubin), a grid of thousands of programs
  (the per-program descriptor scratch), a CUDA graph of the dense forward (scratch taken under capture), and the
  device time of long prefills, AOT (tl kernel, TMA) vs JIT (Gluon).

Writes ``gpu_check.json`` and ``gpu_check.log`` under --out (default $OUT, else ./gpu_check_out) and prints a short
table last. ``--dry-run`` runs end to end on a machine without a GPU: it imports every variant, checks each AOT
table covers every configuration the dispatch can ask for, checks calls give clean errors, and says what it skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

LOG: list[str] = []


def log(msg: str = "") -> None:
    print(msg, flush=True)
    LOG.append(msg)


# ---------------------------------------------------------------- variants


def load_variant(folder: Path):
    """Import a variant folder as a package under a unique name (what kernels does, without kernels)."""
    tag = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]  # two kernels' variants share folder names
    name = "gpucheck_" + "".join(c if c.isalnum() else "_" for c in folder.name) + "_" + tag
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def import_variants(variants: dict[str, Path], prefix: str = "", wrap=lambda module: module) -> dict:
    """{prefix + label: wrap(imported variant)}; a variant that fails to import is logged and left out (the run
    goes on with the others)."""
    mods = {}
    for label, folder in variants.items():
        try:
            mods[prefix + label] = wrap(load_variant(folder))
        except Exception:
            log(f"import of {prefix}{label} failed:\n{traceback.format_exc()}")
    return mods


def find_variants(root: Path, name: str = "flash-attn2") -> dict[str, Path]:
    """{"aot:<variant>": folder, "jit": folder} for the CUDA variants of kernel ``name`` under root."""
    found = {}
    for meta in sorted(root.rglob("metadata.json")):
        folder = meta.parent
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if data.get("name") != name or data.get("backend", {}).get("type") != "cuda":
            continue
        if (folder / "cubins" / "table.json").is_file():
            found[f"aot:{folder.name}"] = folder
        elif folder.name == "torch-cuda":
            found["jit"] = folder
    return found


# ---------------------------------------------------------------- reference (float64)


def visible(sq, sk, causal, window, device):
    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq, device=device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=device)[None, :]
    m = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    return m


def ref_attention(q, k, v, scale, causal=False, window=(-1, -1), softcap=0.0):
    """(B, S, H, D) -> out float64 (B, Sq, H, D), lse float64 (B, H, Sq); rows that see nothing: 0 / -inf."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~visible(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0, lse)[..., None])
    return (p @ v).transpose(1, 2), lse


def poison(device):
    """Fill the caching allocator's free memory of the sizes we use with NaN (outputs are torch.empty)."""
    blocks = [torch.full((n,), float("nan"), device=device, dtype=torch.float32) for n in (1 << 22, 1 << 20, 1 << 16)]
    del blocks


def max_err(a, b) -> float:
    """Max |a - b| over finite reference values; NaN when ``a`` has a NaN (a poisoned, unwritten output), inf when
    the two disagree on which entries are infinite (lse of rows that see no key)."""
    a, b = a.detach().double(), b.detach().double()
    if torch.isnan(a).any():
        return float("nan")
    if not torch.equal(torch.isinf(a), torch.isinf(b)):
        return float("inf")
    fin = torch.isfinite(b)
    return float((a[fin] - b[fin]).abs().max()) if fin.any() else 0.0


TOL_OUT = {torch.float16: 4e-3, torch.bfloat16: 3e-2}
TOL_GRAD = {torch.float16: 1e-2, torch.bfloat16: 6e-2}  # relative to max |ref grad|


# ---------------------------------------------------------------- correctness cases


def fwd_cases():
    cases = []
    for d in (64, 96, 128, 256):
        for dt in (torch.float16, torch.bfloat16):
            cases.append(dict(d=d, dtype=dt, b=2, sq=197, sk=197, hq=4, hk=2, causal=True))
    extra = [dict(causal=False), dict(causal=False, sq=64, sk=300), dict(causal=True, sq=77, sk=250),
             dict(window=(48, 16)), dict(window=(32, -1), causal=True), dict(softcap=30.0, causal=True),
             dict(softcap=20.0, window=(64, 0)), dict(hq=8, hk=1, causal=True), dict(sq=1, sk=513, causal=True),
             # short queries (<= 16 rows: the decode tiles), both sides of the boundary, every head-dim family
             dict(sq=16, sk=300, causal=True, d=64), dict(sq=17, sk=300, causal=True, d=64),
             dict(sq=1, sk=1000, d=256, dtype=torch.float16), dict(sq=4, sk=700, softcap=30.0, window=(100, 0), d=96),
             dict(sq=1, sk=4099, hq=32, hk=8, d=64)]
    for e in extra:
        cases.append({**dict(d=128, dtype=torch.bfloat16, b=2, sq=160, sk=160, hq=4, hk=2, causal=False), **e})
    return cases


def run_dense(fa, c, device, grad=False):
    torch.manual_seed(hash(str(sorted(c.items(), key=str))) % (1 << 31))
    q = torch.randn(c["b"], c["sq"], c["hq"], c["d"], device=device, dtype=c["dtype"], requires_grad=grad)
    k = torch.randn(c["b"], c["sk"], c["hk"], c["d"], device=device, dtype=c["dtype"], requires_grad=grad)
    v = torch.randn(c["b"], c["sk"], c["hk"], c["d"], device=device, dtype=c["dtype"], requires_grad=grad)
    scale = c["d"] ** -0.5
    kw = dict(causal=c.get("causal", False), window_size=c.get("window", (-1, -1)), softcap=c.get("softcap", 0.0))
    poison(device)
    out, lse = fa.flash_attn_func(q, k, v, softmax_scale=scale, return_softmax_lse=True, **kw)
    ro, rl = ref_attention(q.detach(), k.detach(), v.detach(), scale, kw["causal"], kw["window_size"], kw["softcap"])
    errs = {"out": max_err(out, ro), "lse": max_err(lse, rl)}
    ok = errs["out"] <= TOL_OUT[c["dtype"]] and errs["lse"] <= 1e-2
    if grad:
        dout = torch.randn_like(out)
        poison(device)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        r, _ = ref_attention(q64, k64, v64, scale, kw["causal"], kw["window_size"], kw["softcap"])
        rq, rk, rv = torch.autograd.grad(r, (q64, k64, v64), dout.double())
        for n, a, b in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
            errs[n] = max_err(a, b) / max(1e-6, float(b.abs().max()))
            ok = ok and errs[n] <= TOL_GRAD[c["dtype"]]
    return ok, errs


def run_varlen(fa, device, d=128, dtype=torch.bfloat16, causal=True, grad=False, window=(-1, -1)):
    torch.manual_seed(7 + d)
    lens_q, lens_k = [37, 1, 130, 64], [37, 90, 130, 200]
    hq, hk = 4, 2
    tq, tk = sum(lens_q) + 5, sum(lens_k)  # 5 packed rows after the last sequence
    q = torch.randn(tq, hq, d, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(tk, hk, d, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(tk, hk, d, device=device, dtype=dtype, requires_grad=grad)
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device=device)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device=device)
    scale = d ** -0.5
    poison(device)
    out, lse = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), softmax_scale=scale,
                                         causal=causal, window_size=window, return_softmax_lse=True)
    errs, ok = {"out": 0.0, "lse": 0.0}, True
    refs = []
    for i in range(len(lens_q)):
        a, b = int(cu_q[i]), int(cu_q[i + 1])
        c0, c1 = int(cu_k[i]), int(cu_k[i + 1])
        ro, rl = ref_attention(q[None, a:b].detach(), k[None, c0:c1].detach(), v[None, c0:c1].detach(), scale,
                               causal, window)
        refs.append(ro[0])
        errs["out"] = max(errs["out"], max_err(out[a:b], ro[0]))
        errs["lse"] = max(errs["lse"], max_err(lse[:, a:b], rl[0]))
    tail_ok = bool((out[-5:] == 0).all()) and bool(torch.isneginf(lse[:, -5:]).all())
    ok = errs["out"] <= TOL_OUT[dtype] and errs["lse"] <= 1e-2 and tail_ok
    if grad:
        dout = torch.randn_like(out)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        outs = []
        for i in range(len(lens_q)):
            a, b, c0, c1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
            outs.append(ref_attention(q64[None, a:b], k64[None, c0:c1], v64[None, c0:c1], scale, causal, window)[0][0])
        r = torch.cat(outs + [torch.zeros(5, hq, d, dtype=torch.float64, device=device)])
        rq, rk, rv = torch.autograd.grad(r, (q64, k64, v64), dout.double())
        for n, a_, b_ in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
            errs[n] = max_err(a_, b_) / max(1e-6, float(b_.abs().max()))
            ok = ok and errs[n] <= TOL_GRAD[dtype]
    return ok, errs


def run_kvcache(fa, device, d=128, dtype=torch.bfloat16, page=None, s_new=1, causal=True, softcap=0.0):
    """Decode/append against a contiguous (page=None) or paged cache; reference over the updated cache."""
    torch.manual_seed(11 + d + (page or 0))
    b, hq, hk, cap = 3, 8, 2, 512
    lens = torch.tensor([100, 1, 300], dtype=torch.int32, device=device)
    q = torch.randn(b, s_new, hq, d, device=device, dtype=dtype)
    kn = torch.randn(b, s_new, hk, d, device=device, dtype=dtype)
    vn = torch.randn(b, s_new, hk, d, device=device, dtype=dtype)
    kc = torch.randn(b, cap, hk, d, device=device, dtype=dtype)
    vc = torch.randn(b, cap, hk, d, device=device, dtype=dtype)
    bt = None
    if page:
        per = cap // page
        perm = torch.randperm(b * per, device=device)
        bt = perm.view(b, per).to(torch.int32)
        kp = torch.empty(b * per, page, hk, d, device=device, dtype=dtype)
        vp = torch.empty_like(kp)
        kp[bt.long().view(-1)] = kc.view(b * per, page, hk, d)
        vp[bt.long().view(-1)] = vc.view(b * per, page, hk, d)
        kc_use, vc_use = kp, vp
    else:
        kc_use, vc_use = kc, vc
    scale = d ** -0.5
    poison(device)
    out, lse = fa.flash_attn_with_kvcache(q, kc_use, vc_use, k=kn, v=vn, cache_seqlens=lens, block_table=bt,
                                         softmax_scale=scale, causal=causal, softcap=softcap, return_softmax_lse=True)
    err = 0.0
    for i in range(b):
        n = int(lens[i])
        kk = torch.cat([kc[i, :n], kn[i]])[None]
        vv = torch.cat([vc[i, :n], vn[i]])[None]
        ro, rl = ref_attention(q[i:i + 1], kk, vv, scale, causal, (-1, -1), softcap)
        err = max(err, max_err(out[i:i + 1], ro), max_err(lse[i:i + 1], rl) * 0.1)
    return err <= TOL_OUT[dtype], {"out": err}


def recorder(rows: list, label: str):
    """record(case name, fn -> (ok, errors)): one result row per case, logged; a failure is a result, the run
    goes on."""
    def record(name, fn):
        t0 = time.perf_counter()
        try:
            ok, errs = fn()
        except Exception as e:
            ok, errs = False, {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows.append({"impl": label, "case": name, "ok": bool(ok), "errs": errs,
                     "seconds": round(time.perf_counter() - t0, 3)})
        log(f"  [{label}] {'ok  ' if ok else 'FAIL'} {name} {errs}")
    return record


def correctness(fa, device, label, quick=False) -> list[dict]:
    rows = []

    record = recorder(rows, label)

    for c in fwd_cases()[: 4 if quick else None]:
        name = "fwd d{d} {dt} b{b} sq{sq} sk{sk} h{hq}/{hk} causal={causal} win={w} cap={cap}".format(
            dt=str(c["dtype"]).split(".")[-1], w=c.get("window", (-1, -1)), cap=c.get("softcap", 0.0), **c)
        record(name, lambda c=c: run_dense(fa, c, device))
    for d in (64, 128, 256):
        for dt in (torch.float16, torch.bfloat16):
            c = dict(d=d, dtype=dt, b=2, sq=150, sk=150, hq=4, hk=2, causal=True)
            record(f"bwd d{d} {str(dt).split('.')[-1]} causal", lambda c=c: run_dense(fa, c, device, grad=True))
    c = dict(d=128, dtype=torch.bfloat16, b=2, sq=130, sk=170, hq=4, hk=4, causal=False, softcap=25.0,
             window=(40, 20))
    record("bwd d128 bf16 window+softcap", lambda: run_dense(fa, c, device, grad=True))
    record("varlen fwd d128 bf16 causal", lambda: run_varlen(fa, device))
    record("varlen fwd d64 fp16 window", lambda: run_varlen(fa, device, 64, torch.float16, False, window=(30, 10)))
    record("varlen bwd d128 bf16 causal", lambda: run_varlen(fa, device, grad=True))
    record("kvcache decode d128 bf16", lambda: run_kvcache(fa, device))
    record("kvcache append4 d64 fp16", lambda: run_kvcache(fa, device, 64, torch.float16, s_new=4))
    record("paged decode page16 d128 bf16", lambda: run_kvcache(fa, device, page=16))
    record("paged decode page256 d256 fp16", lambda: run_kvcache(fa, device, 256, torch.float16, page=256))
    record("paged append3 page64 d96 bf16 softcap", lambda: run_kvcache(fa, device, 96, page=64, s_new=3,
                                                                        softcap=30.0))
    return rows


def sliding_window_correctness(sw, device, label) -> list[dict]:
    """sliding-window prefill and ring-cache decode (precompiled or JIT) against the float64 reference."""
    rows = []
    record = recorder(rows, label)

    def prefill(d, dt, b, sq, sk, hq, hk, window, causal, cap):
        torch.manual_seed(d + sq)
        q = torch.randn(b, sq, hq, d, device=device, dtype=dt)
        k = torch.randn(b, sk, hk, d, device=device, dtype=dt)
        v = torch.randn(b, sk, hk, d, device=device, dtype=dt)
        poison(device)
        out = sw.sliding_window_attn_func(q, k, v, window_size=window, causal=causal, softcap=cap)
        left, right = (window - 1, 0 if causal else window - 1) if isinstance(window, int) else window
        ref, _ = ref_attention(q, k, v, d ** -0.5, causal, (left, right), cap)
        err = max_err(out, ref)
        return err <= TOL_OUT[dt], {"out": err}

    def ring_decode(d, dt, b, hq, hk, w, n, cap):
        torch.manual_seed(d + w)
        cache = sw.RingKVCache.allocate(b, w, hk, d, dtype=dt, device=device)
        k = torch.randn(b, n, hk, d, device=device, dtype=dt)
        v = torch.randn(b, n, hk, d, device=device, dtype=dt)
        sw.ring_cache_append(cache, k, v)
        q = torch.randn(b, 1, hq, d, device=device, dtype=dt)
        poison(device)
        out = sw.sliding_window_decode(q, cache, softcap=cap)
        keep = min(n, w)
        ref, _ = ref_attention(q, k[:, n - keep:], v[:, n - keep:], d ** -0.5, False, (-1, -1), cap)
        err = max_err(out, ref)
        return err <= TOL_OUT[dt], {"out": err}

    for d, dt, (b, sq, sk, hq, hk), window, causal, cap in [
            (64, torch.float16, (2, 300, 300, 8, 2), 64, True, 0.0),
            (128, torch.bfloat16, (1, 513, 513, 4, 4), 128, True, 0.0),
            (96, torch.bfloat16, (1, 200, 260, 4, 1), (50, 20), False, 30.0),
            (256, torch.float16, (1, 130, 130, 2, 2), 33, True, 0.0),
            (80, torch.bfloat16, (1, 100, 100, 2, 2), 17, True, 0.0)]:  # d80: no cubin, the torch path
        record(f"sw d{d} {str(dt).split('.')[-1]} window={window} causal={causal} cap={cap}",
               lambda a=(d, dt, b, sq, sk, hq, hk, window, causal, cap): prefill(*a))
    for d, dt, (b, hq, hk), w, n, cap in [
            (128, torch.bfloat16, (4, 32, 8), 4096, 5000, 0.0),  # wrapped ring, split over partitions
            (64, torch.float16, (2, 8, 2), 1024, 300, 0.0),       # not yet full
            (256, torch.bfloat16, (1, 32, 1), 512, 700, 50.0),    # MQA 32: two head chunks; softcap
            (96, torch.float16, (2, 4, 4), 64, 64, 0.0),           # head size 96 (bucket 128), one partition
            (72, torch.bfloat16, (1, 4, 2), 128, 200, 0.0)]:       # head size 72: the torch path
        record(f"sw ring decode d{d} {str(dt).split('.')[-1]} h{hq}/{hk} W{w} tokens{n} cap={cap}",
               lambda a=(d, dt, b, hq, hk, w, n, cap): ring_decode(*a))
    return rows


def sliding_window_timings(mods: dict, device) -> list[dict]:
    """Host time per ring-cache decode call (B4, 32/8 heads, d128, W4096 full)."""
    rows = []
    for label, sw in mods.items():
        cache = sw.RingKVCache.allocate(4, 4096, 8, 128, dtype=torch.bfloat16, device=device)
        sw.ring_cache_append(cache, torch.randn(4, 4096, 8, 128, device=device, dtype=torch.bfloat16),
                             torch.randn(4, 4096, 8, 128, device=device, dtype=torch.bfloat16))
        q = torch.randn(4, 1, 32, 128, device=device, dtype=torch.bfloat16)
        us = host_us(lambda: sw.sliding_window_decode(q, cache))
        rows.append({"impl": label, "ring_decode_us": round(us, 1)})
        log(f"  {rows[-1]}")
    return rows


# ---------------------------------------------------------------- paged-attention

PAGED_TESTS = Path(__file__).resolve().parent.parent / "kernel_repos" / "paged-attention" / "tests"
TOL_PAGED = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}  # relative (Frobenius) error vs float64


def _paged_ref():
    if str(PAGED_TESTS) not in sys.path:
        sys.path.insert(0, str(PAGED_TESTS))
    import paged_ref

    return paged_ref


def _paged_caches(pa, ref, sc, layout, bs, dtype, device, storage, kv, ks, vs):
    """Caches poisoned with NaN, filled through the variant's own reshape_and_cache[_flash] (the op under test)."""
    fp8 = storage is not None
    make = ref.vllm_caches if layout == "vllm" else ref.flash_caches
    kc, vc = make(sc, bs, dtype, device=device, fp8=fp8)
    if fp8:
        kc, vc = kc.view(storage), vc.view(storage)
    k, v = ref.tokens_in_slot_order(sc)
    write = pa.reshape_and_cache if layout == "vllm" else pa.reshape_and_cache_flash
    write(k.to(dtype).to(device), v.to(dtype).to(device), kc, vc, sc.slot_mapping.to(device), kv, ks, vs)
    return kc, vc


PAGED_CASES = [  # (api, layout, block size, head size, dtype, (hq, hk), seq lens, alibi, fp8 storage)
    ("v1", "vllm", 16, 128, torch.bfloat16, (32, 8), [1, 100, 1000, 3000], False, None),
    ("v1", "vllm", 8, 64, torch.float16, (8, 8), [37, 513], True, None),
    ("v1", "vllm", 32, 256, torch.bfloat16, (16, 2), [700, 64, 1], False, None),
    ("v2", "vllm", 16, 128, torch.float16, (8, 2), [1100, 9, 2048], False, None),
    ("v1", "vllm", 16, 128, torch.bfloat16, (8, 2), [300, 33], False, torch.uint8),
    ("flash", "flash", 16, 128, torch.bfloat16, (32, 8), [1, 100, 1000, 3000], False, None),
    ("flash", "flash", 256, 128, torch.bfloat16, (64, 1), [2000, 5], False, None),  # GQA 64: 4 head chunks
    ("flash", "flash", 48, 80, torch.float16, (6, 2), [129, 64, 3], True, None),  # rows of 16, head size 80
    ("flash", "flash", 12, 256, torch.bfloat16, (4, 2), [400, 7], False, None),  # page rows of 1
    ("flash", "flash", 16, 64, torch.float16, (8, 2), [260, 17], False, torch.float8_e4m3fn),
    ("flash", "flash", 16, 72, torch.float16, (4, 2), [90, 30], False, None),  # head size 72: the torch path
]


def paged_correctness(pa, device, label) -> list[dict]:
    """Every op (reshape_and_cache[_flash], v1, v2, flash decode) on fresh random inputs vs float64, plus the cache
    bytes vs the torch path, plus device-side index checking (NaN row, error at the next call)."""
    ref = _paged_ref()
    rows = []

    record = recorder(rows, label)

    def decode_case(api, layout, bs, d, dt, heads, lens, alibi, storage):
        hq, hk = heads
        g = torch.Generator().manual_seed(bs * 31 + d + hq + len(lens))
        sc = ref.make_scenario(lens, hk, d, bs, shared_prefix=1, generator=g)
        kv, ks, vs = ("fp8", 0.05, 0.02) if storage is not None else ("auto", 1.0, 1.0)
        kc, vc = _paged_caches(pa, ref, sc, layout, bs, dt, device, storage, kv, ks, vs)
        q = torch.randn(len(lens), hq, d, generator=g).to(dt)
        qd = q.to(device)
        bt, sl = sc.block_tables.to(device), sc.seq_lens.to(device)
        slopes = torch.linspace(0.02, 0.3, hq) if alibi else None
        sd = slopes.to(device) if alibi else None
        scale = d ** -0.5
        poison(device)
        out = torch.full_like(qd, float("nan"))
        if api == "flash":
            pa.paged_attention_flash(out, qd, kc, vc, bt, sl, scale, max(lens), sd, kv, ks, vs)
        elif api == "v1":
            pa.paged_attention_v1(out, qd, kc, vc, hk, scale, bt, sl, bs, max(lens), sd, kv, ks, vs)
        else:
            parts = -(-max(lens) // pa.PARTITION_SIZE)
            es = torch.full((len(lens), hq, parts), float("nan"), device=device)
            ml = torch.full_like(es, float("nan"))
            tmp = torch.full((len(lens), hq, parts, d), float("nan"), device=device, dtype=dt)
            pa.paged_attention_v2(out, es, ml, tmp, qd, kc, vc, hk, scale, bt, sl, bs, max(lens), sd, kv, ks, vs)
        pa.check_errors()
        if storage is not None:
            kr = lambda x: ref.fp8_round(x.to(dt).double(), ks)  # noqa: E731
            vr = lambda x: ref.fp8_round(x.to(dt).double(), vs)  # noqa: E731
        else:
            kr = vr = lambda x: x.to(dt).double()  # noqa: E731
        want = ref.decode_ref(q, sc, scale, alibi=slopes, kv_round=(kr, vr))
        got = out.double().cpu()
        rel = float((got - want).norm() / want.norm()) if not torch.isnan(got).any() else float("nan")
        return rel <= TOL_PAGED[dt], {"rel": rel, "backend": pa.backend_for(qd)}

    for case in PAGED_CASES:
        api, layout, bs, d, dt, heads, lens, alibi, storage = case
        name = (f"paged {api} {layout} bs{bs} d{d} {str(dt).split('.')[-1]} h{heads[0]}/{heads[1]} max{max(lens)}"
                f"{' alibi' if alibi else ''}{' fp8' if storage is not None else ''}")
        record(name, lambda c=case: decode_case(*c))

    def cache_bytes(layout, kv):
        g = torch.Generator().manual_seed(3)
        hk, d, bs, nb = 4, 128, 16, 64
        key = (torch.randn(300, hk, d, generator=g) * 40).to(torch.bfloat16).to(device)
        value = torch.randn(300, hk, d, generator=g).to(torch.bfloat16).to(device)
        slots = torch.randperm(nb * bs, generator=g)[:300].to(device)
        slots[::9] = -1
        sc = type("S", (), {"keys": [torch.zeros(1, hk, d)], "num_blocks": nb})()
        make = ref.vllm_caches if layout == "vllm" else ref.flash_caches
        write = pa.reshape_and_cache if layout == "vllm" else pa.reshape_and_cache_flash
        a = make(sc, bs, torch.bfloat16, device=device, fp8=kv != "auto")
        b = make(sc, bs, torch.bfloat16, device=device, fp8=kv != "auto")
        write(key, value, *a, slots, kv, 0.3, 0.05)
        torch_impl = importlib.import_module(pa.__name__ + "._torch_impl")
        geom_of = importlib.import_module(pa.__name__ + "._validate")
        geom = (geom_of.vllm_geometry if layout == "vllm" else geom_of.flash_geometry)(*b, kv, torch.bfloat16)
        torch_impl.write_slots(key, value, *b, geom, slots, 0.3, 0.05)
        same = all(torch.equal(x.view(torch.uint8), y.view(torch.uint8)) for x, y in zip(a, b))
        return same, {"bitwise_equal_to_torch_path": same}

    for layout in ("vllm", "flash"):
        for kv in ("auto", "fp8"):
            record(f"paged reshape_and_cache {layout} {kv} bytes", lambda layout=layout, kv=kv: cache_bytes(layout, kv))

    def bad_block():
        g = torch.Generator().manual_seed(9)
        sc = ref.make_scenario([40, 50, 20], 2, 64, 16, generator=g)
        kc, vc = _paged_caches(pa, ref, sc, "flash", 16, torch.float16, device, None, "auto", 1.0, 1.0)
        q = torch.randn(3, 8, 64, generator=g).half().to(device)
        bt = sc.block_tables.to(device)
        bt[1, 2] = 10 ** 6
        out = torch.full_like(q, 7.0)
        pa.set_validation("device")
        pa.paged_attention_flash(out, q, kc, vc, bt, sc.seq_lens.to(device), 0.125, 50)
        torch.cuda.synchronize()
        nan_row = bool(torch.isnan(out[1]).all()) and bool(torch.isfinite(out[0]).all())
        try:
            pa.paged_attention_flash(torch.empty_like(q), q, kc, vc, sc.block_tables.to(device),
                                     sc.seq_lens.to(device), 0.125, 50)
            raised = ""
        except ValueError as e:
            raised = str(e)
        ok = nan_row and "block_tables[1, 2] = 1000000 is out of range" in raised
        return ok, {"nan_row": nan_row, "error": raised[:160]}

    record("paged bad block id (device check)", bad_block)
    return rows


def paged_timings(mods: dict, device) -> list[dict]:
    rows = []
    ref = _paged_ref()
    b, hq, hk, d, ctx, bs = 4, 32, 8, 128, 1024, 16
    g = torch.Generator().manual_seed(0)
    for label, pa in mods.items():
        sc = ref.make_scenario([ctx - 8] * b, hk, d, bs, generator=g)
        kc, vc = _paged_caches(pa, ref, sc, "flash", bs, torch.bfloat16, device, None, "auto", 1.0, 1.0)
        kv5, vv5 = _paged_caches(pa, ref, sc, "vllm", bs, torch.bfloat16, device, None, "auto", 1.0, 1.0)
        q = torch.randn(b, hq, d, device=device, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        bt, sl = sc.block_tables.to(device), sc.seq_lens.to(device)
        kn = torch.randn(b, hk, d, device=device, dtype=torch.bfloat16)
        slots = sc.slot_mapping[:b].to(device)
        flash = host_us(lambda: pa.paged_attention_flash(out, q, kc, vc, bt, sl, d ** -0.5, ctx))
        v1 = host_us(lambda: pa.paged_attention_v1(out, q, kv5, vv5, hk, d ** -0.5, bt, sl, bs, ctx, None, "auto",
                                                   1.0, 1.0))
        pa.set_validation("off")  # the cache write's host slot check is a sync; "off" times the launch path alone
        write = host_us(lambda: pa.reshape_and_cache_flash(kn, kn, kc, vc, slots, "auto", 1.0, 1.0))
        pa.set_validation("device")
        rows.append({"impl": label, "backend": pa.backend_for(q), "flash_decode_us": round(flash, 1),
                     "v1_decode_us": round(v1, 1), "cache_write_us": round(write, 1), **paged_bandwidth(pa, device)})
        log(f"  {rows[-1]}")
    return rows


def paged_bandwidth(pa, device, b=64, ctx=4096, hq=32, hk=8, d=128, bs=16) -> dict:
    """GPU time of one flash-layout decode at batch 64, context 4k (CUDA events over 50 calls, each on other pages so
    the caches are not L2-resident), as K/V bytes read per second."""
    nb = b * ctx // bs
    kc = torch.randn(2 * nb, bs, hk, d, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    tables = [torch.randperm(2 * nb, device=device)[:nb].view(b, -1).to(torch.int32) for _ in range(4)]
    sl = torch.full((b,), ctx, dtype=torch.int32, device=device)
    q = torch.randn(b, hq, d, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    for bt in tables:
        pa.paged_attention_flash(out, q, kc, vc, bt, sl, d ** -0.5, ctx)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(50):
        pa.paged_attention_flash(out, q, kc, vc, tables[i % 4], sl, d ** -0.5, ctx)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 50
    del kc, vc
    torch.cuda.empty_cache()
    kv_bytes = 2 * b * ctx * hk * d * 2
    return {"b64_ctx4k_gpu_us": round(ms * 1e3, 1), "b64_ctx4k_tb_s": round(kv_bytes / (ms * 1e-3) / 1e12, 2)}


def paged_graph(pa, device, label) -> dict:
    """Capture one decode step (reshape_and_cache_flash of the new token + paged_attention_flash, validation
    "device") in a CUDA graph; replay 3 steps with new q/k/v and grown lengths, check each against float64."""
    torch.manual_seed(5)
    b, hq, hk, d, bs, per = 2, 8, 2, 128, 16, 16
    dt = torch.bfloat16
    nb = b * per
    kc = torch.randn(nb, bs, hk, d, device=device, dtype=dt)
    vc = torch.randn_like(kc)
    bt = torch.randperm(nb, device=device).view(b, per).to(torch.int32)
    lens = torch.tensor([20, 100], dtype=torch.int32, device=device)
    q = torch.randn(b, hq, d, device=device, dtype=dt)
    kn = torch.randn(b, hk, d, device=device, dtype=dt)
    vn = torch.randn_like(kn)
    slots = torch.empty(b, dtype=torch.int64, device=device)
    out = torch.empty_like(q)
    cap = per * bs

    def place():  # the new token of sequence i goes to position lens[i] - 1
        pos = lens.long() - 1
        slots.copy_(bt.long().gather(1, (pos // bs)[:, None])[:, 0] * bs + pos % bs)

    def step():
        pa.reshape_and_cache_flash(kn, vn, kc, vc, slots, "auto", 1.0, 1.0)
        pa.paged_attention_flash(out, q, kc, vc, bt, lens, d ** -0.5, cap)

    pa.set_validation("device")
    place()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up: loads the cubins (or JIT-compiles)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            step()
    except Exception as e:
        return {"impl": label, "ok": False, "error": f"capture: {type(e).__name__}: {str(e)[:300]}"}
    worst = 0.0
    for _ in range(3):
        lens.add_(1)
        place()
        q.copy_(torch.randn_like(q))
        kn.copy_(torch.randn_like(kn))
        vn.copy_(torch.randn_like(vn))
        g.replay()
        torch.cuda.synchronize()
        for i in range(b):
            n = int(lens[i])
            rows_ = bt[i].long()
            kk = kc[rows_].reshape(-1, hk, d)[:n][None]
            vv = vc[rows_].reshape(-1, hk, d)[:n][None]
            if not (torch.equal(kk[0, n - 1], kn[i]) and torch.equal(vv[0, n - 1], vn[i])):
                return {"impl": label, "ok": False, "error": "the replayed cache write did not land in its slot"}
            ro, _ = ref_attention(q[i:i + 1, None], kk, vv, d ** -0.5, False)
            worst = max(worst, max_err(out[i:i + 1, None], ro))
    pa.check_errors()
    t0 = time.perf_counter()
    for _ in range(100):
        g.replay()
    torch.cuda.synchronize()
    return {"impl": label, "ok": worst <= TOL_OUT[dt], "max_err": worst,
            "replay_us": round((time.perf_counter() - t0) / 100 * 1e6, 1)}


PAGED_FIRST_CALL = r"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
import torch
folder = sys.argv[1]
spec = importlib.util.spec_from_file_location("pfc_variant", folder + "/__init__.py",
                                              submodule_search_locations=[folder])
m = importlib.util.module_from_spec(spec); sys.modules["pfc_variant"] = m; spec.loader.exec_module(m)
t1 = time.perf_counter()
kc = torch.randn(64, 16, 8, 128, device="cuda", dtype=torch.bfloat16)
bt = torch.arange(64, device="cuda", dtype=torch.int32).view(4, 16)
sl = torch.full((4,), 200, device="cuda", dtype=torch.int32)
q = torch.randn(4, 32, 128, device="cuda", dtype=torch.bfloat16)
out = torch.empty_like(q)
torch.cuda.synchronize()
t2 = time.perf_counter()
m.paged_attention_flash(out, q, kc, kc, bt, sl, 0.1, 256); torch.cuda.synchronize()
t3 = time.perf_counter()
m.paged_attention_flash(out, q, kc, kc, bt, sl, 0.1, 256); torch.cuda.synchronize()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t3 - t2, "second_call_s": t4 - t3}))
"""


def paged_first_call(folder: Path, label: str) -> dict:
    """A decode in a fresh process: AOT loads its cubins, the JIT compiles with an empty Triton cache."""
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, "-c", PAGED_FIRST_CALL, str(folder)], capture_output=True, text=True,
                              env=dict(os.environ, TRITON_CACHE_DIR=cache), timeout=300)
    if proc.returncode != 0:
        return {"impl": label, "error": proc.stderr.strip()[-500:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"impl": label, **{k: round(v, 4) for k, v in out.items()}}
    log(f"  {row}")
    return row


def paged_cpu_call(pa) -> str:
    """The dry run's call: CPU tensors (the torch path in every variant)."""
    q = torch.randn(2, 4, 64)
    kc = torch.randn(6, 16, 2, 64)
    out = torch.empty_like(q)
    pa.paged_attention_flash(out, q, kc, kc, torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
                             torch.tensor([20, 5], dtype=torch.int32), 0.125)
    return f"ran ({pa.backend_for(q)} path, finite={bool(out.isfinite().all())})"


# ---------------------------------------------------------------- timing, graphs, compile


def host_us(fn, iters=200) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / iters * 1e6


def submit_us(fn, iters=100) -> float:
    """Host time of one call with an idle GPU queue (median): what the Python path and the launch cost, apart from
    the kernel's own time (host_us over back-to-back calls is bounded by whichever of the two is slower)."""
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2] * 1e6


def timings(mods: dict, device, with_sdpa: bool = True) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    b, hq, hk, d, ctx = 4, 32, 8, 128, 1024
    q1 = torch.randn(b, 1, hq, d, device=device, dtype=torch.bfloat16)
    kc = torch.randn(b, ctx, hk, d, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    lens = torch.full((b,), ctx - 8, dtype=torch.int32, device=device)
    qp = torch.randn(1, 128, hq, d, device=device, dtype=torch.bfloat16)
    kp = torch.randn(1, 128, hk, d, device=device, dtype=torch.bfloat16)
    vp = torch.randn_like(kp)
    for label, fa in mods.items():
        # kv-cache calls validate cache_seqlens on the host (one device->host copy per call, skipped under graph
        # capture); the dense call over the same keys has no sync: its time is the launch path alone
        decode = host_us(lambda: fa.flash_attn_with_kvcache(q1, kc, vc, cache_seqlens=lens, causal=True))
        dense_decode = host_us(lambda: fa.flash_attn_func(q1, kc, vc, causal=True))
        prefill = host_us(lambda: fa.flash_attn_func(qp, kp, vp, causal=True))
        rows.append({"impl": label, "decode_us": round(decode, 1), "decode_dense_us": round(dense_decode, 1),
                     "prefill128_us": round(prefill, 1),
                     "submit_decode_us": round(submit_us(lambda: fa.flash_attn_with_kvcache(
                         q1, kc, vc, cache_seqlens=lens, causal=True)), 1),
                     "submit_dense_decode_us": round(submit_us(lambda: fa.flash_attn_func(q1, kc, vc, causal=True)), 1)})
    if not with_sdpa:
        return rows
    sq, sk, sv = (t.transpose(1, 2) for t in (qp, kp, vp))
    sdpa = host_us(lambda: torch.nn.functional.scaled_dot_product_attention(sq, sk, sv, is_causal=True,
                                                                            enable_gqa=True))
    kq = q1.transpose(1, 2)
    kk, kv = kc.transpose(1, 2), vc.transpose(1, 2)
    sdpa_dec = host_us(lambda: torch.nn.functional.scaled_dot_product_attention(kq, kk, kv, enable_gqa=True))
    sub = round(submit_us(lambda: torch.nn.functional.scaled_dot_product_attention(kq, kk, kv, enable_gqa=True)), 1)
    rows.append({"impl": "sdpa", "decode_us": round(sdpa_dec, 1), "decode_dense_us": round(sdpa_dec, 1),
                 "prefill128_us": round(sdpa, 1), "submit_decode_us": sub, "submit_dense_decode_us": sub})
    return rows


FIRST_CALL = r"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
import torch
folder = sys.argv[1]
spec = importlib.util.spec_from_file_location("fc_variant", folder + "/__init__.py", submodule_search_locations=[folder])
m = importlib.util.module_from_spec(spec); sys.modules["fc_variant"] = m; spec.loader.exec_module(m)
t1 = time.perf_counter()
q = torch.randn(1, 256, 8, 128, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
t2 = time.perf_counter()
m.flash_attn_func(q, q, q, causal=True); torch.cuda.synchronize()
t3 = time.perf_counter()
m.flash_attn_func(q, q, q, causal=True); torch.cuda.synchronize()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t3 - t2, "second_call_s": t4 - t3}))
"""


def first_call(folder: Path, label: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)  # JIT: an empty cache, as in a user's fresh container
        proc = subprocess.run([sys.executable, "-c", FIRST_CALL, str(folder)], capture_output=True, text=True,
                              env=env, timeout=300)
    if proc.returncode != 0:
        return {"impl": label, "error": proc.stderr.strip()[-500:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"impl": label, **{k: round(v, 4) for k, v in out.items()}}


def graph_decode(fa, device, label) -> dict:
    """Capture one paged decode step (append k/v + attention) in a CUDA graph; replay 3 steps, check each."""
    torch.manual_seed(5)
    b, hq, hk, d, page, per = 2, 8, 2, 128, 16, 16
    dt = torch.bfloat16
    kp = torch.randn(b * per, page, hk, d, device=device, dtype=dt)
    vp = torch.randn_like(kp)
    bt = torch.randperm(b * per, device=device).view(b, per).to(torch.int32)
    lens = torch.tensor([20, 100], dtype=torch.int32, device=device)
    q = torch.randn(b, 1, hq, d, device=device, dtype=dt)
    kn = torch.randn(b, 1, hk, d, device=device, dtype=dt)
    vn = torch.randn_like(kn)

    def step():
        return fa.flash_attn_with_kvcache(q, kp, vp, k=kn, v=vn, cache_seqlens=lens, block_table=bt, causal=True)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up: loads the cubins (or JIT-compiles) and checks the cache values eagerly
    torch.cuda.current_stream().wait_stream(s)
    lens.add_(1)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            out = step()
    except Exception as e:
        return {"impl": label, "ok": False, "error": f"capture: {type(e).__name__}: {str(e)[:300]}"}
    worst = 0.0
    for _ in range(3):
        q.copy_(torch.randn_like(q))
        kn.copy_(torch.randn_like(kn))
        vn.copy_(torch.randn_like(vn))
        g.replay()
        torch.cuda.synchronize()
        for i in range(b):
            n = int(lens[i]) + 1
            rows = bt[i].long()
            kk = kp[rows].reshape(-1, hk, d)[:n][None]
            vv = vp[rows].reshape(-1, hk, d)[:n][None]
            ro, _ = ref_attention(q[i:i + 1], kk, vv, d ** -0.5, True)
            worst = max(worst, max_err(out[i:i + 1], ro))
        lens.add_(1)
    t0 = time.perf_counter()
    for _ in range(100):
        g.replay()
    torch.cuda.synchronize()
    return {"impl": label, "ok": worst <= TOL_OUT[dt], "max_err": worst,
            "replay_us": round((time.perf_counter() - t0) / 100 * 1e6, 1)}


def compiled(fa, device, label) -> dict:
    torch.manual_seed(9)
    q = torch.randn(2, 128, 8, 64, device=device, dtype=torch.float16)
    k = torch.randn(2, 128, 2, 64, device=device, dtype=torch.float16)
    v = torch.randn_like(k)

    def f(q, k, v):
        return fa.flash_attn_func(q * 1.0, k, v, causal=True) + 1.0

    try:
        torch._dynamo.reset()
        cf = torch.compile(f, fullgraph=True)
        t0 = time.perf_counter()
        got = cf(q, k, v)
        secs = time.perf_counter() - t0
        want = f(q, k, v)
        err = max_err(got, want)
        return {"impl": label, "ok": err <= 1e-3, "max_err": err, "compile_s": round(secs, 2)}
    except Exception as e:
        return {"impl": label, "ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"}


# ---------------------------------------------------------------- flash-attn3


class FA3Api:
    """flash-attn3's variant behind the flash_attn 2.x call shapes the checks above use (same math): lse through
    ``return_attn_probs``, the kv-cache's block table as ``page_table``."""

    def __init__(self, module):
        self.module = module
        self.SUPPORTED = module.SUPPORTED

    def flash_attn_func(self, q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                        return_softmax_lse=False):
        return self.module.flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal,
                                           window_size=window_size, softcap=softcap,
                                           return_attn_probs=return_softmax_lse)

    def flash_attn_varlen_func(self, q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False,
                               window_size=(-1, -1), softcap=0.0, return_softmax_lse=False):
        return self.module.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=softmax_scale,
                                                  causal=causal, window_size=window_size, softcap=softcap,
                                                  return_attn_probs=return_softmax_lse)

    def flash_attn_with_kvcache(self, q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                return_softmax_lse=False):
        return self.module.flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=cache_seqlens,
                                                   page_table=block_table, softmax_scale=softmax_scale,
                                                   causal=causal, window_size=window_size, softcap=softcap,
                                                   return_softmax_lse=return_softmax_lse)


def fa3_layout_cases(fa, device, label) -> list[dict]:
    """The dense forward's TMA path under layouts the plain cases do not reach, against float64."""
    rows = []

    record = recorder(rows, label)

    def packed(d=128, dtype=torch.bfloat16, b=2, s=333, h=8, causal=True, softcap=0.0):
        torch.manual_seed(d + s)
        qkv = torch.randn(b, s, 3, h, d, device=device, dtype=dtype)
        q, k, v = qkv.unbind(2)  # strides (s*3*h*d, 3*h*d, d, 1): TMA with a row stride of 3*h*d
        poison(device)
        out, lse = fa.flash_attn_func(q, k, v, softmax_scale=d ** -0.5, causal=causal, softcap=softcap,
                                      return_softmax_lse=True)
        ro, rl = ref_attention(q, k, v, d ** -0.5, causal, (-1, -1), softcap)
        errs = {"out": max_err(out, ro), "lse": max_err(lse, rl)}
        return errs["out"] <= TOL_OUT[dtype] and errs["lse"] <= 1e-2, errs

    def misaligned(d=64, dtype=torch.float16):
        torch.manual_seed(3)
        flat = torch.randn(2 * 200 * 4 * d + 8, device=device, dtype=dtype)
        q = flat[1:1 + 2 * 200 * 4 * d].view(2, 200, 4, d)  # data pointer 2 bytes past alignment
        k = torch.randn(2, 200, 2, d, device=device, dtype=dtype)
        v = torch.randn_like(k)
        out = fa.flash_attn_func(q, k, v, softmax_scale=d ** -0.5, causal=True)
        err = max_err(out, ref_attention(q, k, v, d ** -0.5, True)[0])
        return err <= TOL_OUT[dtype], {"out": err}

    def many_programs(d=128, dtype=torch.bfloat16):
        c = dict(d=d, dtype=dtype, b=4, sq=2048, sk=2048, hq=32, hk=8, causal=True)  # 16 x 128 = 2048 programs
        return run_dense(fa, c, device)

    record("fwd packed qkv d128 bf16 causal", lambda: packed())
    record("fwd packed qkv d96 fp16 softcap", lambda: packed(96, torch.float16, causal=False, softcap=20.0))
    record("fwd packed qkv d256 bf16 b1 h2", lambda: packed(256, b=1, h=2, s=190))
    record("fwd misaligned q d64 fp16", lambda: misaligned())
    record("fwd b4 s2048 h32/8 d128 bf16 causal", lambda: many_programs())
    return rows


def graph_dense(fa, device, label) -> dict:
    """Capture a dense forward (flash-attn3 AOT: the TMA kernel, its descriptor scratch taken during capture) in a
    CUDA graph; replay with fresh inputs, check each replay against float64."""
    torch.manual_seed(6)
    b, s, hq, hk, d, dt = 2, 300, 8, 2, 128, torch.bfloat16
    q = torch.randn(b, s, hq, d, device=device, dtype=dt)
    k = torch.randn(b, s, hk, d, device=device, dtype=dt)
    v = torch.randn_like(k)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fa.flash_attn_func(q, k, v, causal=True)  # warm-up: module load (or JIT compile) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            out = fa.flash_attn_func(q, k, v, causal=True)
    except Exception as e:
        return {"impl": label, "kind": "dense", "ok": False, "error": f"capture: {type(e).__name__}: {str(e)[:300]}"}
    worst = 0.0
    for _ in range(3):
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        g.replay()
        torch.cuda.synchronize()
        worst = max(worst, max_err(out, ref_attention(q, k, v, d ** -0.5, True)[0]))
    return {"impl": label, "kind": "dense", "ok": worst <= TOL_OUT[dt], "max_err": worst}


def fa3_throughput(mods: dict, device) -> list[dict]:
    """Device time of long prefills (CUDA events): flash-attn3's AOT variant (the tl kernel's TMA cubins) against
    its JIT variant (Gluon warp-specialized on sm90) -- the resolver prefers the AOT variant, so this is the price
    or gain of that preference. Forward only, bf16, B2 H16 S4096."""
    rows = []
    b, s, h = 2, 4096, 16
    for label, fa in mods.items():
        for d in (64, 128):
            for causal in (False, True):
                torch.manual_seed(d)
                q, k, v = (torch.randn(b, s, h, d, device=device, dtype=torch.bfloat16) for _ in range(3))
                try:
                    for _ in range(3):
                        fa.flash_attn_func(q, k, v, causal=causal)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(10):
                        fa.flash_attn_func(q, k, v, causal=causal)
                    end.record()
                    torch.cuda.synchronize()
                    ms = start.elapsed_time(end) / 10
                    flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
                    row = {"impl": label, "d": d, "causal": causal, "ms": round(ms, 3),
                           "tflops": round(flops / ms / 1e9, 1)}
                except Exception as e:
                    row = {"impl": label, "d": d, "causal": causal, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                rows.append(row)
                log(f"  {json.dumps(row)}")
    return rows


# ---------------------------------------------------------------- dry run (no GPU)


def dry_run(variants: dict[str, Path], keys_module: str = "_aot_keys", cpu_call=None) -> list[dict]:
    rows = []
    for label, folder in variants.items():
        row = {"impl": label}
        try:
            fa = load_variant(folder)
            row["imported"] = True
            row["supported_devices"] = list(fa.SUPPORTED.get("devices", ()))
            files = [p for p in folder.rglob("*.py")]
            row["imports_triton"] = sorted(p.name for p in files if "import triton" in p.read_text()
                                           or "from triton" in p.read_text())
            if (folder / "cubins" / "table.json").is_file():
                table = json.loads((folder / "cubins" / "table.json").read_text())
                keys = importlib.import_module(fa.__name__ + "." + keys_module)
                want = set(keys.all_keys())
                have = {}
                for e in table["entries"]:
                    have.setdefault(e["arch"], set()).add(e["key"])
                row["missing"] = {a: sorted(want - ks)[:5] for a, ks in have.items() if want - ks}
                row["cubins"] = len(table["entries"])
                row["size_mb"] = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 2)
            q = torch.randn(1, 8, 2, 64)
            try:
                if cpu_call is not None:
                    row["cpu_call"] = cpu_call(fa)
                else:
                    fa.flash_attn_func(q.half(), q.half(), q.half()) if hasattr(fa, "flash_attn_func") else None
                    row["cpu_call"] = "ran"
            except Exception as e:  # the clean error this variant gives on a CPU-only machine
                row["cpu_call"] = f"{type(e).__name__}: {str(e)[:160]}"
        except Exception as e:
            row["imported"] = False
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
        log(f"  {json.dumps(row)}")
    return rows


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=Path, default=Path(".gpu"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--dry-run", action="store_true", help="no GPU: import, coverage and error checks only")
    ap.add_argument("--quick", action="store_true", help="fewer forward cases")
    ap.add_argument("--kernels", default="flash-attn2,sliding-window,paged-attention,flash-attn3",
                    help="comma list of the kernels to check (default: all four)")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="skip the remaining sections (saying so) once this much time has passed")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    wanted = {k.strip() for k in args.kernels.split(",") if k.strip()}
    known = {"flash-attn2", "sliding-window", "paged-attention", "flash-attn3"}
    if wanted - known:
        ap.error(f"--kernels: unknown {sorted(wanted - known)}; valid: {', '.join(sorted(known))}")
    variants = find_variants(args.variants) if "flash-attn2" in wanted else {}
    sw_variants = find_variants(args.variants, "sliding-window") if "sliding-window" in wanted else {}
    pa_variants = find_variants(args.variants, "paged-attention") if "paged-attention" in wanted else {}
    fa3_variants = ({f"flash-attn3 {k}": v for k, v in find_variants(args.variants, "flash-attn3").items()}
                    if "flash-attn3" in wanted else {})
    log(f"gpu_check: torch {torch.__version__}, flash-attn2 variants {sorted(variants)}, sliding-window variants "
        f"{sorted(sw_variants)}, paged-attention variants {sorted(pa_variants)}, flash-attn3 variants "
        f"{sorted(fa3_variants)} under {args.variants}")
    result: dict = {"torch": torch.__version__,
                    "variants": {k: str(v) for k, v in {**variants, **fa3_variants}.items()}}
    gpu = torch.cuda.is_available() and not args.dry_run
    if not variants and "flash-attn2" in wanted:
        log("no flash-attn2 CUDA variants found; build them first (see the README's GPU check section)")
    if not gpu:
        log("dry run: no GPU in use; skipping correctness, timing, first-call, CUDA graph and torch.compile checks")
        result["dry_run"] = (dry_run(variants)
                             + dry_run({f"sliding-window {k}": v for k, v in sw_variants.items()})
                             + dry_run({f"paged-attention {k}": v for k, v in pa_variants.items()},
                                       cpu_call=paged_cpu_call)
                             + dry_run(fa3_variants))
        ok = all(r.get("imported") and not r.get("missing")
                 and not ("aot" in r["impl"] and r.get("imports_triton")) for r in result["dry_run"])
    else:
        device = torch.device("cuda")
        result["device"] = torch.cuda.get_device_name()
        result["capability"] = list(torch.cuda.get_device_capability())
        mods = import_variants(variants)
        fa3_mods = import_variants(fa3_variants, wrap=FA3Api)
        os.environ.setdefault("FLASH_ATTN_TRITON_AUTOTUNE", "0")  # the JIT: one config per family, bounded time
        skipped = result["skipped"] = []

        def section(name, fn):
            if time.perf_counter() - t_start > args.budget_s:
                log(f"{name}: skipped (time budget of {args.budget_s:.0f} s used)")
                skipped.append(name)
                return []
            log(name)
            return fn()

        result["correctness"] = section("correctness", lambda: [
            r for label, fa in mods.items() for r in correctness(fa, device, label, quick=args.quick)])
        sw_mods = import_variants(sw_variants, "sliding-window ")
        result["correctness"] += section("sliding-window correctness", lambda: [
            r for label, sw in sw_mods.items() for r in sliding_window_correctness(sw, device, label)])
        pa_mods = import_variants(pa_variants, "paged-attention ")
        result["correctness"] += section("paged-attention correctness", lambda: [
            r for label, pa in pa_mods.items() for r in paged_correctness(pa, device, label)])
        result["correctness"] += section("flash-attn3 correctness", lambda: [
            r for label, fa in fa3_mods.items()
            for r in correctness(fa, device, label, quick=args.quick) + fa3_layout_cases(fa, device, label)])
        result["timing"] = section("host time per call", lambda: timings(mods, device)
                                   + timings(fa3_mods, device, with_sdpa=False))
        result["paged_timing"] = section("paged-attention host time per call", lambda: paged_timings(pa_mods, device))
        result["sliding_window_timing"] = section("sliding-window ring decode host time per call",
                                                  lambda: sliding_window_timings(sw_mods, device))
        result["fa3_throughput"] = section("flash-attn3 prefill device time (AOT tl+TMA vs JIT Gluon)",
                                           lambda: fa3_throughput(fa3_mods, device))
        result["first_call"] = section("first call in a fresh process", lambda: [
            first_call({**variants, **fa3_variants}[label], label) for label in [*mods, *fa3_mods]])
        result["first_call"] += section("paged-attention first call in a fresh process", lambda: [
            paged_first_call(pa_variants[label.removeprefix("paged-attention ")], label) for label in pa_mods])
        result["graph"] = section("CUDA graph decode step (flash-attn3: and dense forward)", lambda: [
            graph_decode(fa, device, label) for label, fa in {**mods, **fa3_mods}.items()]
            + [graph_dense(fa, device, label) for label, fa in fa3_mods.items()])
        result["graph"] += section("paged-attention CUDA graph decode step",
                                   lambda: [paged_graph(pa, device, label) for label, pa in pa_mods.items()])
        result["compile"] = section("torch.compile(fullgraph=True)", lambda: [
            compiled(fa, device, label) for label, fa in {**mods, **fa3_mods}.items()])
        ok = bool(result["correctness"]) and all(
            r["ok"] for r in result["correctness"] + result["graph"] + result["compile"])
    result["ok"] = bool(ok)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = summary(result)
    (args.out / "gpu_check.log").write_text("\n".join(LOG + [table]) + "\n")
    print(table)
    return 0 if ok else 1


def summary(result: dict) -> str:
    lines = ["", f"gpu_check summary ({result['seconds']} s, {'OK' if result['ok'] else 'FAILURES'})"]
    if "dry_run" in result:
        for r in result["dry_run"]:
            lines.append(f"  {r['impl']:<50} imported={r.get('imported')} cubins={r.get('cubins', '-')} "
                         f"size={r.get('size_mb', '-')}MB missing={bool(r.get('missing'))} "
                         f"triton_imports={r.get('imports_triton')}")
        return "\n".join(lines)
    by = {}
    for r in result["correctness"]:
        s = by.setdefault(r["impl"], [0, 0])
        s[0] += r["ok"]
        s[1] += 1
    lines.append(f"  {'impl':<50} {'correct':>9} {'kvdec us':>9} {'dec us':>7} {'prefill us':>11} "
                 f"{'host kvdec':>10} {'host dec':>9} {'1st call s':>11} {'graph':>6} {'compile':>8}")
    timing = {r["impl"]: r for r in result["timing"]}
    first = {r["impl"]: r for r in result["first_call"]}
    graph = {}
    for r in result["graph"]:  # flash-attn3 has two graph checks (decode, dense): both must pass
        graph[r["impl"]] = {"ok": graph.get(r["impl"], {}).get("ok", True) and r.get("ok", False)}
    comp = {r["impl"]: r for r in result["compile"]}
    for impl in list(by) + ["sdpa"]:
        t = timing.get(impl, {})
        c = by.get(impl)
        lines.append(f"  {impl:<50} {f'{c[0]}/{c[1]}' if c else '-':>9} {t.get('decode_us', '-'):>9} "
                     f"{t.get('decode_dense_us', '-'):>7} "
                     f"{t.get('prefill128_us', '-'):>11} {t.get('submit_decode_us', '-'):>10} "
                     f"{t.get('submit_dense_decode_us', '-'):>9} {first.get(impl, {}).get('first_call_s', '-'):>11} "
                     f"{str(graph.get(impl, {}).get('ok', '-')):>6} {str(comp.get(impl, {}).get('ok', '-')):>8}")
    for r in result.get("paged_timing") or []:
        g = graph.get(r["impl"], {})
        lines.append(f"  {r['impl']:<50} host us/call: flash decode {r['flash_decode_us']}, v1 {r['v1_decode_us']}, "
                     f"cache write {r['cache_write_us']} ({r['backend']} path); B64 ctx4k decode "
                     f"{r.get('b64_ctx4k_gpu_us')} us GPU = {r.get('b64_ctx4k_tb_s')} TB/s; graph {g.get('ok', '-')} "
                     f"replay {g.get('replay_us', '-')} us; first call "
                     f"{first.get(r['impl'], {}).get('first_call_s', '-')} s")
    for r in result.get("sliding_window_timing") or []:
        lines.append(f"  {r['impl']:<50} host us/call: ring decode {r['ring_decode_us']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
