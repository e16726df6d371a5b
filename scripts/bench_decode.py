#!/usr/bin/env python3
"""One GPU run: correctness checks, then decode bandwidth of our paged kernel vs SDPA (cuDNN, flash) on a contiguous
cache and FlexAttention with a paged block mask, against the device-to-device copy bandwidth measured in the same
run; plus the sliding-window records (Triton prefill check and timing, ring-buffer decode memory over 100k tokens).

    python scripts/bench_decode.py --out DIR [--quick] [--skip-sweep] [--parts correct,grid,...]

Decode points: batch {1,16,64,256} x context {1k,4k,32k}, GQA 32/8, head dim 128, page 16, bf16. KV bytes/s counts
the K and V bytes a decode step must read (batch * ctx * kv_heads * head_dim * 2 bytes * 2). Inputs smaller than
256 MiB are rotated among several copies (disjoint block sets for the paged kernels) so L2 does not serve them.
Each point is timed three ways (all methods alike): "call" (sync after every call: the host's launch cost counts,
the figure of runs 1-2), "stream" (20 calls back to back: the host queues ahead) and "graph" (a CUDA graph of the
rotating calls, replayed: GPU time only, as a serving loop with CUDA graphs sees it). Ours runs with index
validation "device" (the default: checked inside the kernel, no host sync); the host/device/off cost is measured
separately at the headline point. Writes DIR/results.json and prints a table (TB/s call/stream/graph).
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
sys.path.insert(0, str(ROOT))
from kernel_loader.reference import attention_reference  # noqa: E402  (the float64 flash-semantics reference)

import paged_attention as pa  # noqa: E402
from paged_attention import ops as pa_ops  # noqa: E402
from paged_ref import decode_ref, flash_caches, fp8_round, make_scenario, tokens_in_slot_order, vllm_caches  # noqa: E402

HQ, HK, D, PAGE = 32, 8, 128, 16
DT = torch.bfloat16
ROTATE_BYTES = 256 << 20
TUNED: dict = {}  # layout -> kernel config chosen by the sweep (None: the package defaults)


def bench(fn, warmup=10, rep=40):
    """Median time in ms of one call, synchronizing after each (device events): the host's launch time counts, as
    for a caller that waits on every step. The figure the earlier runs reported."""
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


def bench_stream(fn, n=20, trials=5):
    """ms per call for n back-to-back calls (no sync between): the host queues ahead of the GPU, so this is GPU time
    when the host's per-call cost is below it, and the host's cost when it is not. Median over trials."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / n)
    times.sort()
    return times[len(times) // 2]


def bench_graph(fn, calls, replays=None, trials=5):
    """ms per call from a CUDA graph of ``calls`` consecutive calls (each on the next rotating input), replayed:
    GPU time alone, launch gaps included, host cost excluded (how a serving loop with CUDA graphs runs decode)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    replays = replays or max(2, -(-20 // calls))
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / (replays * calls))
    times.sort()
    del g
    return times[len(times) // 2]


def timings(fn, calls, kv_bytes, copy_bw, modes=("call", "stream", "graph")):
    """{mode: {ms, TBps, pct_copy} or {error}} for each timing mode."""
    res = {}
    for mode in modes:
        try:
            ms = bench(fn) if mode == "call" else bench_stream(fn) if mode == "stream" else bench_graph(fn, calls)
            res[mode] = {"ms": ms, "TBps": kv_bytes / (ms * 1e-3) / 1e12,
                         "pct_copy": 100 * kv_bytes / (ms * 1e-3) / copy_bw}
        except Exception as e:  # e.g. a host sync inside graph capture: recorded, the run goes on
            res[mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            torch.cuda.synchronize()
    return res


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
    for i, (mode, (lens, hq, hk, d, bs, dtype, layout, fp8, alibi, api)) in enumerate(
            [(m, sp) for m in ("device", "off") for sp in specs]):
        pa.set_validation(mode)
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
        cases.append({"case": i, "mode": mode, "api": api, "layout": layout, "seq_lens": lens, "heads": [hq, hk], "head_size": d,
                      "block_size": bs, "dtype": str(dtype), "fp8": fp8, "alibi": alibi, "rel_err": err,
                      "backend": pa.backend_for(q.cuda()), "ok": err < 1e-2})
    # bad input on the GPU. host mode: refused before launch. device mode: no sync, the bad sequence's output is
    # NaN, the others are right, the next call raises; the device is fine afterwards.
    sc = make_scenario([40, 40, 33], 8, 128, 16, generator=g)
    kc, vc = vllm_caches(sc, 16, DT, device="cuda")
    k, v = tokens_in_slot_order(sc)
    pa.set_validation("host")
    pa.reshape_and_cache(k.to(DT).cuda(), v.to(DT).cuda(), kc, vc, sc.slot_mapping.cuda(), "auto", 1.0, 1.0)
    bt = sc.block_tables.cuda().clone()
    bt[1, 0] = sc.num_blocks + 5
    q = torch.randn(3, 32, 128, generator=g).to(DT)
    bad = {}
    for mode in ("host", "device"):
        pa.set_validation(mode)
        out = torch.full((3, 32, 128), 7.0, device="cuda", dtype=DT)
        try:
            pa.paged_attention_v1(out, q.cuda(), kc, vc, 8, 0.1, bt, sc.seq_lens.cuda(), 16, 40, None, "auto", 1.0, 1.0)
            first = "no error"
        except ValueError as e:
            first = str(e)
        torch.cuda.synchronize()
        rec = {"first_call": first, "out_untouched": bool((out == 7.0).all())}
        if mode == "device":
            ref = decode_ref(q, sc, 0.1, kv_round=(lambda x: x.to(DT).double(),) * 2)
            rec["bad_row_nan"] = bool(torch.isnan(out[1]).all())
            rec["good_rows_rel_err"] = max(rel_err(out[i], ref[i]) for i in (0, 2))
            try:
                pa.paged_attention_v1(out, q.cuda(), kc, vc, 8, 0.1, sc.block_tables.cuda(), sc.seq_lens.cuda(), 16,
                                      40, None, "auto", 1.0, 1.0)
                rec["next_call"] = "no error"
            except ValueError as e:
                rec["next_call"] = str(e)
            pa.paged_attention_v1(out, q.cuda(), kc, vc, 8, 0.1, sc.block_tables.cuda(), sc.seq_lens.cuda(), 16,
                                  40, None, "auto", 1.0, 1.0)
            pa.check_errors()
            rec["after_rel_err"] = rel_err(out, ref)
            from paged_attention import _device_check

            rec["report_in_pinned_host_memory"] = not _device_check.state_for(out.device).copy_after_launch
        bad[mode] = rec
    torch.cuda.synchronize()
    results["paged_correctness"] = cases
    results["paged_bad_input_gpu"] = bad
    ok = all(c["ok"] for c in cases)
    print(f"paged correctness: {sum(c['ok'] for c in cases)}/{len(cases)} ok (modes device+off); max rel err "
          f"{max(c['rel_err'] for c in cases):.2e}; bad input: {json.dumps(bad)[:600]}", flush=True)
    return ok


def kernel_resources(results):
    """Registers, spills and shared memory of the decode kernel per layout at the headline config (no device time:
    read off the compiled kernel after one call)."""
    from paged_attention import _triton_impl as ti

    g = torch.Generator().manual_seed(11)
    res = {}
    for layout in ("vllm", "flash"):
        setup = PagedSetup(64, 4096, layout, 1, g)
        setup()
        torch.cuda.synchronize()
        k = ti.last_launch
        res[layout] = {"n_regs": getattr(k, "n_regs", None), "n_spills": getattr(k, "n_spills", None),
                       "shared": getattr(getattr(k, "metadata", None), "shared", None),
                       "config": list(ti.config_for(D, TUNED.get(layout), layout))}
        del setup
        torch.cuda.empty_cache()
    results["kernel_resources"] = res
    print("kernel resources:", json.dumps(res), flush=True)


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

    def __init__(self, batch, ctx, layout, copies, g, mode="device", tuning=None):
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
        self.layout, self.ctx, self.i, self.mode, self.tuning = layout, ctx, 0, mode, tuning
        self.copies = copies

    def __call__(self):
        pa_ops._tuning = self.tuning if self.tuning is not None else TUNED.get(self.layout)
        pa.set_validation(self.mode)
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
    import torch._dynamo as dynamo  # (a bare "import torch._dynamo" here would make torch local: run 4's Flex error)

    dynamo.config.recompile_limit = 64  # one compile per grid shape (the default 8 stopped run 3 at 32k)
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


GRID_MODES = ("call", "stream", "graph")


def decode_grid(results, copy_bw, batches, ctxs, quick, deadline, only=None):
    """Every method at every point, timed three ways (see bench / bench_stream / bench_graph)."""
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
                methods = methods[:3]
            if only:
                methods = [m for m in methods if m[0] in only]
            left = deadline - time.time()
            if left < 0:
                row["skipped"] = "time budget"
                rows.append(row)
                continue
            if left < 60:
                methods = [m for m in methods if m[0] != "flex_paged"]
                row["flex_paged"] = {"error": "skipped: time budget (FlexAttention compiles per shape)"}
            for name, make in methods:
                fn = None
                try:
                    fn = make()
                    row[name] = timings(fn, copies, kv_bytes, copy_bw, GRID_MODES)
                except Exception as e:  # record and go on: one baseline failing must not lose the run
                    row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
                finally:
                    fn = None
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            rows.append(row)
            results["decode"] = rows

            def fmt(r):
                if "graph" not in r and "call" not in r:
                    return "ERR"
                return "/".join(f"{r[m]['TBps']:.2f}" if "TBps" in r.get(m, {}) else "x" for m in GRID_MODES)

            print(" ".join([f"B{batch:<4} ctx{ctx:<6}"] + [f"{n}={fmt(row[n])}" for n, _ in methods]), flush=True)
    results["decode"] = rows


def host_overhead(results):
    """Host time per call (us) with the GPU work negligible (B1, ctx 1k): 200 calls back to back, host clock, then
    a sync. Ours in each validation mode, and SDPA-cuDNN."""
    g = torch.Generator().manual_seed(13)
    res = {}
    fns = {f"ours_flash_{m}": PagedSetup(1, 1024, "flash", 1, g, mode=m) for m in ("device", "host", "off")}
    fns["ours_vllm_device"] = PagedSetup(1, 1024, "vllm", 1, g, mode="device")
    fns["sdpa_cudnn"] = sdpa_fn(1, 1024, "cudnn", 1)[0]
    for name, fn in fns.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - t) / 200
        torch.cuda.synchronize()
        res[name] = host * 1e6
    results["host_us_per_call_b1_ctx1k"] = res
    print("host us per call (B1 ctx1k): " + " ".join(f"{k}={v:.1f}" for k, v in res.items()), flush=True)
    del fns
    torch.cuda.empty_cache()


def validation_cost(results, copy_bw):
    """Headline point (B64 ctx4k), both layouts: validation host / device / off, timed per call and back to back
    (and as a graph where capture is possible: not in host mode, which syncs)."""
    g = torch.Generator().manual_seed(17)
    kv_bytes = 64 * 4096 * HK * D * 4
    res = {}
    for layout in ("flash", "vllm"):
        for mode in ("off", "device", "host"):
            setup = PagedSetup(64, 4096, layout, 1, g, mode=mode)
            res[f"{layout}_{mode}"] = timings(setup, 1, kv_bytes, copy_bw,
                                              ("call", "stream") if mode == "host" else GRID_MODES)
            del setup
            torch.cuda.empty_cache()
    results["validation_cost_b64_ctx4k"] = res
    print("validation cost B64 ctx4k (TB/s call/stream/graph): " + " ".join(
        f"{k}=" + "/".join(f"{v[m]['TBps']:.2f}" if "TBps" in v.get(m, {}) else "x" for m in GRID_MODES)
        for k, v in res.items()), flush=True)


def sweep(results, copy_bw, points=((64, 4096), (16, 4096))):
    """Kernel configs at a few points, both layouts, validation mode "device", GPU time (graph replays): first tile
    x warps x stages at the package's split, then the split (programs per SM) for the best. Returns
    {(layout, batch, ctx): best cfg} and records everything."""
    g = torch.Generator().manual_seed(3)
    best, out = {}, []
    for batch, ctx in points:
        kv_bytes = batch * ctx * HK * D * 4
        copies = max(1, min(32, math.ceil(ROTATE_BYTES / kv_bytes)))
        for layout in ("flash", "vllm"):
            setup = PagedSetup(batch, ctx, layout, copies, g)
            rows = []
            configs = [dict(tile=t, num_warps=w, num_stages=st) for t in (64, 128) for w in (4, 8) for st in (2, 3)]
            for stage in ("cfg", "pps"):
                if stage == "pps":
                    if not rows:
                        break
                    top = dict(min(rows, key=lambda r: r["ms"])["cfg"])
                    top.pop("programs_per_sm", None)
                    configs = [dict(top, programs_per_sm=p) for p in (1, 2, 4, 8)]
                for c in configs:
                    setup.tuning = c
                    try:
                        ms = bench_graph(setup, copies)
                        rows.append({"layout": layout, "batch": batch, "ctx": ctx, "cfg": c, "ms": ms,
                                     "TBps": kv_bytes / (ms * 1e-3) / 1e12,
                                     "pct_copy": 100 * kv_bytes / (ms * 1e-3) / copy_bw})
                    except Exception as e:
                        out.append({"layout": layout, "batch": batch, "ctx": ctx, "cfg": c, "error": str(e)[:200]})
                        torch.cuda.synchronize()
            out.extend(rows)
            if rows:
                b = min(rows, key=lambda r: r["ms"])
                best[f"{layout}_b{batch}_ctx{ctx}"] = b
                print(f"sweep {layout} B{batch} ctx{ctx}: best {b['cfg']} {b['TBps']:.2f} TB/s; " + " ".join(
                    f"{r['cfg'].get('tile')}/{r['cfg'].get('num_warps')}/{r['cfg'].get('num_stages')}"
                    f"/{r['cfg'].get('programs_per_sm', '-')}={r['TBps']:.2f}" for r in rows), flush=True)
            del setup
            torch.cuda.empty_cache()
    pa_ops._tuning = None
    results["sweep"] = out
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
        ref = attention_reference(q, k, v, window=(left, right), softcap=softcap)  # float64
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="fewer points and methods (a smoke run)")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--parts", default="correct,resources,host,validation,sweep,grid",
                    help="comma list of: correct, resources, host, validation, sweep, grid, sliding")
    ap.add_argument("--methods", default="", help="grid methods to run (comma list; default all): ours_vllm, "
                    "ours_flash, sdpa_cudnn, sdpa_flash, flex_paged")
    ap.add_argument("--budget-s", type=float, default=400.0,
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
            results["correct_ok"] = check_paged(results)
            save()
        copy_bw = copy_bandwidth()
        results["copy_bandwidth_Bps"] = copy_bw
        print(f"device {props.name}: copy bandwidth (read + write) {copy_bw / 1e12:.2f} TB/s", flush=True)
        if "resources" in parts:
            kernel_resources(results)
        if "host" in parts:
            host_overhead(results)
            save()
        if "validation" in parts:
            validation_cost(results, copy_bw)
            save()
        if "sweep" in parts and not args.skip_sweep:
            sweep(results, copy_bw)
            save()
        if "sliding" in parts:
            sliding_window_records(results, args.quick)
            save()
        if "grid" in parts:  # the package defaults, validation mode "device" (the default)
            TUNED.clear()
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
    for name in ("ours_vllm", "ours_flash", "sdpa_cudnn", "sdpa_flash", "flex_paged"):
        for mode in GRID_MODES:
            o = (head or {}).get(name, {}).get(mode, {})
            if "TBps" in o:
                print(f"HEADLINE {name} [{mode}] B64 ctx4k GQA32/8 page16: {o['TBps']:.2f} TB/s = {o['pct_copy']:.1f}% "
                      "of copy bandwidth (target 2.85 TB/s)")


if __name__ == "__main__":
    main()
