#!/usr/bin/env python3
"""One GPU run: correctness checks, then decode bandwidth of our paged kernel vs SDPA (cuDNN, flash) on a contiguous
cache and FlexAttention with a paged block mask, against the device-to-device copy bandwidth measured in the same
run; plus the sliding-window records (Triton prefill check and timing, ring-buffer decode memory over 100k tokens).

    python scripts/bench_decode.py --out DIR [--quick] [--skip-sweep]

Decode points: batch {1,16,64,256} x context {1k,4k,32k}, GQA 32/8, head dim 128, page 16, bf16. KV bytes/s counts
the K and V bytes a decode step must read (batch * ctx * kv_heads * head_dim * 2 bytes * 2). Inputs smaller than
256 MiB are rotated among several copies (disjoint block sets for the paged kernels) so L2 does not serve them.
Writes DIR/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "kernel_repos" / "paged-attention" / "torch-ext"))
sys.path.insert(0, str(ROOT / "kernel_repos" / "paged-attention" / "tests"))
sys.path.insert(0, str(ROOT / "kernel_repos" / "sliding-window" / "torch-ext"))

import paged_attention as pa  # noqa: E402
from paged_attention import ops as pa_ops  # noqa: E402
from paged_ref import decode_ref, flash_caches, fp8_round, make_scenario, tokens_in_slot_order, vllm_caches  # noqa: E402

HQ, HK, D, PAGE = 32, 8, 128, 16
DT = torch.bfloat16
ROTATE_BYTES = 256 << 20
TUNED: dict = {}  # layout -> kernel config chosen by the sweep (None: the package defaults)


def bench(fn, warmup=10, rep=40):
    """Median time in ms (device events), after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def rel_err(out, ref):
    out = out.double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------ correctness (paged)

def check_paged(results):
    cases = []
    g = torch.Generator().manual_seed(1234)
    specs = [  # (seq_lens, hq, hk, d, bs, dtype, layout, fp8, alibi, api)
        ([1, 17, 100, 1000], 32, 8, 128, 16, torch.bfloat16, "vllm", False, False, "v1"),
        ([3000, 5, 513, 1024], 32, 8, 128, 16, torch.bfloat16, "vllm", False, True, "v2"),
        ([77, 2048, 9], 16, 2, 64, 8, torch.float16, "vllm", False, False, "v1"),
        ([300, 33], 8, 8, 256, 32, torch.bfloat16, "vllm", False, False, "v1"),
        ([150, 700], 12, 4, 80, 16, torch.float16, "flash", False, False, "flash"),
        ([129, 4000], 32, 8, 128, 16, torch.bfloat16, "vllm", True, False, "v1"),
        ([129, 900], 32, 8, 128, 16, torch.bfloat16, "flash", True, False, "flash"),
        ([5000, 1, 64], 8, 1, 128, 32, torch.float16, "vllm", False, True, "v2"),
    ]
    for i, (lens, hq, hk, d, bs, dtype, layout, fp8, alibi, api) in enumerate(specs):
        sc = make_scenario(lens, hk, d, bs, shared_prefix=3, generator=g)
        kc, vc = (vllm_caches if layout == "vllm" else flash_caches)(sc, bs, dtype, device="cuda", fp8=fp8)
        k, v = tokens_in_slot_order(sc)
        ks, vs = (0.04, 0.03) if fp8 else (1.0, 1.0)
        kv = "fp8" if fp8 else "auto"
        write = pa.reshape_and_cache if layout == "vllm" else pa.reshape_and_cache_flash
        write(k.to(dtype).cuda(), v.to(dtype).cuda(), kc, vc, sc.slot_mapping.cuda(), kv, ks, vs)
        q = torch.randn(len(lens), hq, d, generator=g).to(dtype)
        slopes = torch.linspace(0.01, 0.2, hq) if alibi else None
        out = torch.full((len(lens), hq, d), float("nan"), dtype=dtype, device="cuda")
        bt, sl = sc.block_tables.cuda(), sc.seq_lens.cuda()
        scale = d ** -0.5
        if api == "v1":
            pa.paged_attention_v1(out, q.cuda(), kc, vc, hk, scale, bt, sl, bs, max(lens),
                                  slopes.cuda() if alibi else None, kv, ks, vs)
        elif api == "v2":
            parts = math.ceil(max(lens) / pa.PARTITION_SIZE)
            es = torch.empty(len(lens), hq, parts, device="cuda")
            ml = torch.empty_like(es)
            tmp = torch.empty(len(lens), hq, parts, d, device="cuda", dtype=dtype)
            pa.paged_attention_v2(out, es, ml, tmp, q.cuda(), kc, vc, hk, scale, bt, sl, bs, max(lens),
                                  slopes.cuda() if alibi else None, kv, ks, vs)
        else:
            pa.paged_attention_flash(out, q.cuda(), kc, vc, bt, sl, scale, alibi_slopes=slopes.cuda() if alibi else None,
                                     kv_cache_dtype=kv, k_scale=ks, v_scale=vs)
        torch.cuda.synchronize()
        if fp8:
            rk = (lambda x: fp8_round(x.to(dtype).double(), 0.04), lambda x: fp8_round(x.to(dtype).double(), 0.03))
        else:
            rk = (lambda x: x.to(dtype).double(),) * 2
        ref = decode_ref(q, sc, scale, alibi=slopes, kv_round=rk)
        err = rel_err(out, ref)
        cases.append({"case": i, "api": api, "layout": layout, "seq_lens": lens, "heads": [hq, hk], "head_size": d,
                      "block_size": bs, "dtype": str(dtype), "fp8": fp8, "alibi": alibi, "rel_err": err,
                      "backend": pa.backend_for(q.cuda()), "ok": err < 1e-2})
    # bad input on the GPU: refused before launch, and the device is fine afterwards
    sc = make_scenario([40, 40], 8, 128, 16, generator=g)
    kc, vc = vllm_caches(sc, 16, DT, device="cuda", fill=0.0)
    bt = sc.block_tables.cuda().clone()
    bt[1, 0] = sc.num_blocks + 5
    out = torch.empty(2, 32, 128, device="cuda", dtype=DT)
    try:
        pa.paged_attention_v1(out, torch.randn_like(out), kc, vc, 8, 0.1, bt, sc.seq_lens.cuda(), 16, 40, None,
                              "auto", 1.0, 1.0)
        bad = "no error"
    except ValueError as e:
        bad = str(e)
    torch.cuda.synchronize()
    results["paged_correctness"] = cases
    results["paged_bad_input_gpu"] = bad
    print(f"paged correctness: {sum(c['ok'] for c in cases)}/{len(cases)} ok; max rel err "
          f"{max(c['rel_err'] for c in cases):.2e}; bad input -> {bad[:90]}")


# -------------------------------------------------------------------------------------------- bandwidth

def copy_bandwidth():
    n = 4 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), warmup=5, rep=20)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / (ms * 1e-3)


class PagedSetup:
    """``copies`` disjoint sets of shuffled pages in one pool; each call uses the next set."""

    def __init__(self, batch, ctx, layout, copies, g):
        nb = ctx // PAGE
        total = batch * nb * copies
        perm = torch.randperm(total, generator=g, device="cpu").to(torch.int32)
        self.tables = [perm[c * batch * nb:(c + 1) * batch * nb].view(batch, nb).cuda() for c in range(copies)]
        if layout == "vllm":
            self.kc = torch.randn(total, HK, D // 8, PAGE, 8, device="cuda", dtype=DT)
            self.vc = torch.randn(total, HK, D, PAGE, device="cuda", dtype=DT)
        else:
            self.kc = torch.randn(total, PAGE, HK, D, device="cuda", dtype=DT)
            self.vc = torch.randn(total, PAGE, HK, D, device="cuda", dtype=DT)
        self.seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        self.q = torch.randn(batch, HQ, D, device="cuda", dtype=DT)
        self.out = torch.empty_like(self.q)
        self.layout, self.ctx, self.i = layout, ctx, 0

    def __call__(self):
        if self.layout in TUNED:
            pa_ops._tuning = TUNED[self.layout]
        t = self.tables[self.i % len(self.tables)]
        self.i += 1
        if self.layout == "vllm":
            pa.paged_attention_v1(self.out, self.q, self.kc, self.vc, HK, D ** -0.5, t, self.seq_lens, PAGE, self.ctx,
                                  None, "auto", 1.0, 1.0)
        else:
            pa.paged_attention_flash(self.out, self.q, self.kc, self.vc, t, self.seq_lens, D ** -0.5, self.ctx)


def sdpa_fn(batch, ctx, backend, copies):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # GQA decode as MHA: the G query heads sharing a KV head become G query rows, so each KV byte is read once
    ks = [torch.randn(batch, HK, ctx, D, device="cuda", dtype=DT) for _ in range(copies)]
    vs = [torch.randn(batch, HK, ctx, D, device="cuda", dtype=DT) for _ in range(copies)]
    q = torch.randn(batch, HK, HQ // HK, D, device="cuda", dtype=DT)
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    state = {"i": 0}

    def run():
        i = state["i"] % copies
        state["i"] += 1
        with sdpa_kernel([be]):
            return torch.nn.functional.scaled_dot_product_attention(q, ks[i], vs[i])

    run()
    return run, (ks, vs)


def flex_fn(batch, ctx, copies, g):
    from torch.nn.attention.experimental._paged_attention import PagedAttention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    nb = ctx // PAGE
    total = batch * nb * copies
    perm = torch.randperm(total, generator=g).cuda()
    kc = torch.randn(1, HK, total * PAGE, D, device="cuda", dtype=DT)
    vc = torch.randn(1, HK, total * PAGE, D, device="cuda", dtype=DT)
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=DT)
    flex = torch.compile(flex_attention, dynamic=False)
    masks = []
    seq = torch.full((batch,), ctx, device="cuda", dtype=torch.int64)

    def causal_len(b, h, q_idx, kv_idx):
        return kv_idx < seq[b]

    logical = create_block_mask(causal_len, batch, None, 1, ctx, BLOCK_SIZE=(128, PAGE), device="cuda")
    for c in range(copies):
        paged = PagedAttention(total, PAGE, batch, device="cuda")
        table = perm[c * batch * nb:(c + 1) * batch * nb].view(batch, nb)
        paged.page_table[:, :nb] = table
        rows = torch.arange(batch, device="cuda")[:, None].expand(batch, nb)
        paged.physical_to_logical[rows, table] = torch.arange(nb, device="cuda")[None, :].expand(batch, nb)
        masks.append(paged.convert_logical_block_mask(logical))
    state = {"i": 0}

    def run():
        i = state["i"] % copies
        state["i"] += 1
        return flex(q, kc, vc, block_mask=masks[i], enable_gqa=True)

    run()
    return run, (kc, vc)


def decode_grid(results, copy_bw, batches, ctxs, quick, deadline, only=None):
    g = torch.Generator().manual_seed(7)
    rows = []
    for ctx in ctxs:
        for batch in batches:
            kv_bytes = batch * ctx * HK * D * 2 * 2
            copies = max(1, min(32, math.ceil(ROTATE_BYTES / kv_bytes)))
            row = {"batch": batch, "ctx": ctx, "kv_bytes": kv_bytes, "copies": copies}
            methods = [("ours_vllm", lambda: PagedSetup(batch, ctx, "vllm", copies, g)),
                       ("ours_flash", lambda: PagedSetup(batch, ctx, "flash", copies, g)),
                       ("sdpa_cudnn", lambda: sdpa_fn(batch, ctx, "cudnn", copies)[0]),
                       ("sdpa_flash", lambda: sdpa_fn(batch, ctx, "flash", copies)[0]),
                       ("flex_paged", lambda: flex_fn(batch, ctx, copies, g)[0])]
            if quick:
                methods = methods[:1] + methods[2:3]
            if only:
                methods = [m for m in methods if m[0] in only]
            left = deadline - time.time()
            if left < 0:
                row["skipped"] = "time budget"
                rows.append(row)
                continue
            if left < 90:
                methods = [m for m in methods if m[0] != "flex_paged"]
                row["flex_paged"] = {"error": "skipped: time budget (FlexAttention compiles per shape)"}
            for name, make in methods:
                try:
                    fn = make()
                    ms = bench(fn)
                    row[name] = {"ms": ms, "TBps": kv_bytes / (ms * 1e-3) / 1e12,
                                 "pct_copy": 100 * kv_bytes / (ms * 1e-3) / copy_bw}
                except Exception as e:  # record and go on: one baseline failing must not lose the run
                    row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
                finally:
                    fn = None
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            rows.append(row)
            results["decode"] = rows
            print(" ".join([f"B{batch:<4} ctx{ctx:<6}"] + [
                f"{n}={row[n]['TBps']:.2f}TB/s({row[n]['pct_copy']:.0f}%)" if "TBps" in row[n] else f"{n}=ERR"
                for n, _ in methods]), flush=True)
    results["decode"] = rows


def sweep(results, copy_bw):
    """Tile/warps/stages (and programs per SM for the context split) at the headline point (B64, ctx4k), both
    cache layouts; returns the best config per layout."""
    g = torch.Generator().manual_seed(3)
    batch, ctx = 64, 4096
    kv_bytes = batch * ctx * HK * D * 4
    best, out = {}, []
    for layout in ("vllm", "flash"):
        setup = PagedSetup(batch, ctx, layout, 1, g)
        configs = [dict(tile=t, num_warps=w, num_stages=st) for t in (64, 128) for w in (4, 8) for st in (2, 3)]
        rows = []
        for cfg in configs + ["pps"]:
            cands = [cfg] if cfg != "pps" else [dict(min(rows, key=lambda r: r["ms"])["cfg"], programs_per_sm=p)
                                                for p in (2, 8, 16)]
            for c in cands:
                pa_ops._tuning = c
                try:
                    ms = bench(setup)
                    rows.append({"layout": layout, "cfg": c, "ms": ms, "TBps": kv_bytes / (ms * 1e-3) / 1e12,
                                 "pct_copy": 100 * kv_bytes / (ms * 1e-3) / copy_bw})
                except Exception as e:
                    out.append({"layout": layout, "cfg": c, "error": str(e)[:200]})
        out.extend(rows)
        best[layout] = min(rows, key=lambda r: r["ms"]) if rows else None
        print(f"sweep {layout}: " + " ".join(f"{r['cfg']}={r['TBps']:.2f}" for r in rows), flush=True)
        if layout == "vllm":
            pa_ops._tuning = best[layout]["cfg"] if best[layout] else None
            pa.set_validation(True)
            ms_on = bench(setup)
            pa.set_validation(False)
            ms_off = bench(setup)
            results["validation_cost_b64_ctx4k_ms"] = {"validate_on": ms_on, "validate_off": ms_off}
            print(f"validation on {ms_on * 1e3:.1f} us vs off {ms_off * 1e3:.1f} us")
        del setup
        torch.cuda.empty_cache()
    pa_ops._tuning = None
    results["sweep_b64_ctx4k"] = out
    results["sweep_best"] = best
    return best


# ------------------------------------------------------------------------------------------- sliding window

def sliding_window_records(results, quick):
    import sliding_window as sw

    g = torch.Generator().manual_seed(5)
    checks = []
    for (b, sq, sk, hq, hk, d, window, causal, softcap) in [(2, 700, 700, 8, 2, 64, 128, True, 0.0),
                                                           (1, 300, 1000, 4, 4, 128, (100, 20), False, 0.0),
                                                           (2, 513, 513, 8, 4, 96, 65, True, 30.0),
                                                           (1, 1, 4000, 32, 8, 128, 1024, True, 0.0)]:
        q = torch.randn(b, sq, hq, d, generator=g).to(DT)
        k = torch.randn(b, sk, hk, d, generator=g).to(DT)
        v = torch.randn(b, sk, hk, d, generator=g).to(DT)
        out = sw.sliding_window_attn_func(q.cuda(), k.cuda(), v.cuda(), window_size=window, causal=causal,
                                          softcap=softcap)
        from sliding_window._window import normalize_window

        left, right = normalize_window(window, causal)
        ref = _window_ref(q, k, v, left, right, softcap)
        err = rel_err(out, ref)
        checks.append({"shape": [b, sq, sk, hq, hk, d], "window": [left, right], "softcap": softcap,
                       "rel_err": err, "ok": err < 1e-2})
    results["sliding_prefill_correctness"] = checks
    # timing: S=16k, W=4096, causal, bf16, 32 heads (anchor: FlexAttention 1.21 ms) vs full causal SDPA-flash
    s, w = 16384, 4096
    q = torch.randn(1, s, 32, 128, device="cuda", dtype=DT)
    k = torch.randn(1, s, 8, 128, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    ms = bench(lambda: sw.sliding_window_attn_func(q, k, v, window_size=w, causal=True), warmup=3, rep=10)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        ms_full = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True,
                                                                                 enable_gqa=True), warmup=3, rep=10)
    # exact FLOPs of the window: sum over rows of min(i+1, W) keys
    keys = sum(min(i + 1, w) for i in range(s))
    flops = 4 * 32 * keys * 128
    results["sliding_prefill_timing"] = {"S": s, "W": w, "ms": ms, "TFLOPs": flops / (ms * 1e-3) / 1e12,
                                         "sdpa_flash_full_causal_ms": ms_full}
    print(f"sliding prefill S16k W4096: {ms:.3f} ms ({flops / (ms * 1e-3) / 1e12:.0f} TFLOP/s); full causal "
          f"SDPA-flash {ms_full:.3f} ms; checks {sum(c['ok'] for c in checks)}/{len(checks)}")
    del q, k, v, qh, kh, vh
    torch.cuda.empty_cache()
    # ring-buffer decode: memory over 100k generated tokens
    steps = 20_000 if quick else 100_000
    cache = sw.RingKVCache.allocate(1, 4096, 8, 128, dtype=DT, device="cuda")
    kv = torch.randn(1, 1, 8, 128, device="cuda", dtype=DT)
    qd = torch.randn(1, 1, 32, 128, device="cuda", dtype=DT)
    for _ in range(100):
        sw.ring_cache_append(cache, kv, kv)
        sw.sliding_window_decode(qd, cache)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    samples = []
    t0 = time.time()
    for i in range(1, steps + 1):
        sw.ring_cache_append(cache, kv, kv)
        sw.sliding_window_decode(qd, cache)
        if i % (steps // 10) == 0:
            torch.cuda.synchronize()
            samples.append({"tokens": i + 100, "allocated": torch.cuda.memory_allocated(),
                            "peak": torch.cuda.max_memory_allocated()})
    results["ring_decode_memory"] = {"window": 4096, "steps": steps, "cache_bytes": cache.nbytes(),
                                     "allocated_before": base, "samples": samples,
                                     "seconds": time.time() - t0,
                                     "flat": all(s["allocated"] == base for s in samples)}
    print(f"ring decode {steps} tokens: allocated {base} -> {samples[-1]['allocated']} bytes, peak "
          f"{samples[-1]['peak']}, cache {cache.nbytes()} bytes, {time.time() - t0:.1f} s")


def _window_ref(q, k, v, left, right, softcap):
    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    k, v = k.repeat_interleave(hq // hk, 2), v.repeat_interleave(hq // hk, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * d ** -0.5
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    p = torch.softmax(s.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="fewer points and methods (a smoke run)")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--parts", default="correct,sweep,grid,sliding")
    ap.add_argument("--methods", default="", help="grid methods to run (comma list; default all): ours_vllm, "
                    "ours_flash, sdpa_cudnn, sdpa_flash, flex_paged")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="after this many seconds the grid skips FlexAttention (compiles per shape), then stops")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    results = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
               "python": platform.python_version(), "config": {"heads": [HQ, HK], "head_dim": D, "page": PAGE,
                                                               "dtype": "bfloat16"}}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None

    def save():
        (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    t_all = time.time()
    try:
        if "correct" in parts:
            check_paged(results)
            save()
        copy_bw = copy_bandwidth()
        results["copy_bandwidth_Bps"] = copy_bw
        print(f"device {props.name}: copy bandwidth (read + write) {copy_bw / 1e12:.2f} TB/s", flush=True)
        pa.set_validation(False)  # timed calls: indices are valid by construction (cost measured in the sweep)
        if "sweep" in parts and not args.skip_sweep:
            best = sweep(results, copy_bw)
            TUNED.update({k: v["cfg"] for k, v in best.items() if v})
            results["grid_tuning"] = TUNED
            save()
        if "sliding" in parts:
            sliding_window_records(results, args.quick)
            save()
        if "grid" in parts:
            batches = [1, 16, 64, 256] if not args.quick else [64]
            ctxs = [1024, 4096, 32768] if not args.quick else [4096]
            decode_grid(results, copy_bw, batches, ctxs, args.quick, t_all + args.budget_s,
                        args.methods.split(",") if args.methods else None)
    except Exception:
        results["error"] = traceback.format_exc()
        print(results["error"])
    finally:
        results["seconds"] = time.time() - t_all
        save()
    head = next((r for r in results.get("decode", []) if r["batch"] == 64 and r["ctx"] == 4096), None)
    for name in ("ours_vllm", "ours_flash", "sdpa_cudnn"):
        if head and "TBps" in head.get(name, {}):
            o = head[name]
            print(f"HEADLINE {name} B64 ctx4k GQA32/8 page16: {o['TBps']:.2f} TB/s = {o['pct_copy']:.1f}% of copy "
                  "bandwidth (target 2.85 TB/s)")

if __name__ == "__main__":
    main()
