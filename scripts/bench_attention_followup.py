#!/usr/bin/env python3
"""Follow-up GPU run for flash-attn2/3 (issue 4): the checks the first runs missed, the forward's softmax options
compared in one process, head-dim-64 tiles, and the end-to-end Llama prefill, with anchors measured in this run.

    python scripts/bench_attention_followup.py --out DIR [--workers 12] [--skip-check] [--deadline 520]

Phase 0 (parallel, nothing timed): the float64 check of bench_attention.py (dense fwd/lse/grads incl. windows and
softcap, varlen, kv cache with append, paged with random block tables and contiguous; fa2 and fa3; one tile config
per kernel) in one subprocess, and warm-up subprocesses that compile every autotune config the timing phase uses
(Triton's and Inductor's disk caches are shared between processes), so phase 1 compiles almost nothing.
Phase 1 (this process alone on the GPU): SDPA-flash, SDPA-cuDNN and FlexAttention anchors; fa2/fa3 forward under
each softmax option (plain: scale then max; raw_max: max on raw scores, exponent as one FMA; lazy: raw_max plus
skipping the acc rescale unless a row max grows by > 8 in base 2) on seq 16k causal/non-causal (16 heads x 128),
the sliding window (16k, W 4096, causal) and the Llama-1B attention shape (4096 tokens, 32/8 heads x 64, causal);
backward at 16k; host time per call. Every timed output is compared with a reference (rel_err).
Phase 2: Llama 1B-shape prefill (random weights) with sdpa, eager and fa2/fa3 per option, through
kernel_loader.adapters.adapt; logits vs sdpa.
Writes DIR/results.json (device, versions, every figure, the autotune winners).
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
import bench_attention as ba  # noqa: E402
from kernel_loader.reference import flash_visible_pairs  # noqa: E402

VARIANTS = {"plain": dict(raw_max=False, lazy_rescale=False), "raw_max": dict(raw_max=True, lazy_rescale=False),
            "lazy": dict(raw_max=True, lazy_rescale=True)}
# name: (batch, seq, heads_q, heads_kv, head_dim, causal, window)
SHAPES = {"16k": (1, 16384, 16, 16, 128, False, (-1, -1)), "16k_causal": (1, 16384, 16, 16, 128, True, (-1, -1)),
          "window": (1, 16384, 16, 16, 128, True, (4095, 0)), "llama_d64": (1, 4096, 32, 8, 64, True, (-1, -1))}
BWD_SHAPES = ("16k", "16k_causal")
NAMESPACES = {"fa2": ("flash-attn2", "flash_attn2", "_flash_attn2_fu"),
              "fa3": ("flash-attn3", "flash_attn3", "_flash_attn3_fu")}


def kernels(suffix=""):
    return {n: ba.import_kernel(repo, pkg, ns + suffix) for n, (repo, pkg, ns) in NAMESPACES.items()}


def set_options(fa, variant):
    """The options were in the kernel for the 2026-11-22 H100 run (commit 083e4a6) and removed after it (no net gain):
    with today's kernel only "plain" exists and this is a no-op."""
    options = getattr(importlib.import_module(fa.__name__ + "._triton_fwd"), "OPTIONS", None)
    if options is None:
        if variant != "plain":
            raise ValueError(f"forward option set {variant!r} is not in this kernel (only 'plain')")
        return
    options.update(VARIANTS[variant])


def inputs(shape, grad=False, seed=0):
    b, s, hq, hk, d, causal, window = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, s, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def flops(shape):
    b, s, hq, hk, d, causal, window = SHAPES[shape]
    return 4.0 * b * hq * d * flash_visible_pairs(s, s, causal=causal, window=window)


def call(fa, shape, q, k, v):
    _, _, _, _, _, causal, window = SHAPES[shape]
    return fa.flash_attn_func(q, k, v, causal=causal, window_size=window)


# ------------------------------------------------------------------------------------------------ phase 0

def warm_jobs():
    jobs = [f"{impl}:{shape}:{var}:fwd" for impl in ("fa3", "fa2") for shape in SHAPES for var in VARIANTS]
    bwd_var = "raw_max" if "raw_max" in VARIANTS else next(iter(VARIANTS))
    jobs += [f"{impl}:{shape}:{bwd_var}:bwd" for impl in ("fa3", "fa2") for shape in BWD_SHAPES]
    return ["flex:window"] + jobs


def run_warm(jobs):
    fas = kernels()
    for job in jobs:
        try:
            if job == "flex:window":
                flex_window()
                continue
            impl, shape, var, kind = job.split(":")
            set_options(fas[impl], var)
            q, k, v = inputs(shape, grad=kind == "bwd")
            out = call(fas[impl], shape, q, k, v)
            if kind == "bwd":
                out.backward(torch.randn_like(out))
            torch.cuda.synchronize()
        except Exception:
            print(f"warm {job} failed", flush=True)
            traceback.print_exc()


def flex_window(q=None, k=None, v=None):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    import torch._dynamo.config as dcfg
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dcfg, knob):
            setattr(dcfg, knob, 256)
    if q is None:
        q, k, v = inputs("window")
    s, w = SHAPES["window"][1], SHAPES["window"][6][0] + 1
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    mask = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (qi - ki < w), None, None, s, s, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    fn = lambda: flex(qt, kt, vt, block_mask=mask)  # noqa: E731
    fn()
    return fn


def run_check(path, name, parts):
    os.environ["FLASH_ATTN_TRITON_AUTOTUNE"] = "0"  # one tile config per kernel: compile time
    fa = kernels("_chk")[name]
    results = {}
    if True:
        try:
            ba.check(fa, name, results, parts=parts)
        except Exception as e:
            results.setdefault("check_error", []).append(f"{name}: {type(e).__name__}: {e}"[:500])
            traceback.print_exc()
        Path(path).write_text(json.dumps(results, indent=1, default=str))


def phase0(args, results, out):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = []
    checks = [(n, p) for n in ("fa2", "fa3") for p in ("dense", "varlen,kvcache")] if not args.skip_check else []
    for i, (name, parts) in enumerate(checks):  # one process per kernel and part: compiles run in parallel
        procs.append((f"check{i}", subprocess.Popen(
            me + ["--variants", ",".join(VARIANTS), "--child-check", f"{out / f'check{i}.json'}:{name}:{parts}"], env=env,
            stdout=open(out / "check.log", "a"), stderr=subprocess.STDOUT)))
    jobs = warm_jobs()
    n = max(1, min(args.workers, len(jobs)))
    for i in range(n):
        mine = jobs[i::n]
        procs.append((f"warm{i}", subprocess.Popen(me + ["--variants", ",".join(VARIANTS), "--child-warm", ",".join(mine)], env=env,
                                                   stdout=open(out / "warm.log", "a"), stderr=subprocess.STDOUT)))
    for name, p in procs:
        p.wait()
        results.setdefault("phase0", {})[name] = p.returncode
    for i in range(len(checks)):
        f = out / f"check{i}.json"
        chk = json.loads(f.read_text()) if f.exists() else {"check_error": [f"{checks[i]}: no result"]}
        results.setdefault("check", []).extend(chk.get("check", []))
        results.setdefault("check_error", []).extend(chk.get("check_error", []))
        f.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ phase 1

def anchors(results):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    rows, refs = [], {}
    for shape in SHAPES:
        b, s, hq, hk, d, causal, window = SHAPES[shape]
        q, k, v = inputs(shape, grad=shape in BWD_SHAPES)
        qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_(t.requires_grad) for t in (q, k, v))
        if hk != hq:
            kt, vt = (t.detach().repeat_interleave(hq // hk, 1) for t in (kt, vt))
        if shape == "window":
            fn = flex_window(q, k, v)
            refs[shape] = fn().transpose(1, 2).float()
            ms = ba.bench_ms(fn)
            rows.append({"impl": "flex", "shape": shape, "fwd_ms": ms, "fwd_tflops": flops(shape) / ms / 1e9})
            continue
        for label, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            def fn(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            row = {"impl": label, "shape": shape}
            try:
                with torch.no_grad():
                    o = fn()
                if label == "sdpa_flash":
                    refs[shape] = o.transpose(1, 2).float()
                row["fwd_ms"] = ba.bench_ms(fn)
                row["fwd_tflops"] = flops(shape) / row["fwd_ms"] / 1e9
                if shape in BWD_SHAPES:
                    o = fn()
                    do = torch.randn_like(o)
                    row["bwd_ms"] = ba.bench_ms(lambda: o.backward(do, retain_graph=True))
                    row["bwd_tflops"] = 2.5 * flops(shape) / row["bwd_ms"] / 1e9
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:200]
            rows.append(row)
            print(f"  {label:10s} {shape:10s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()
                                                        if isinstance(v, float)), flush=True)
        del q, k, v, qt, kt, vt
        torch.cuda.empty_cache()
    results["anchors"] = rows
    return refs


def ours(fas, refs, results, deadline):
    rows = results.setdefault("ours", [])
    for shape in SHAPES:
        for impl in ("fa3", "fa2"):
            for var in VARIANTS:
                if time.time() > deadline:
                    results.setdefault("skipped", []).append(f"{impl}:{shape}:{var}")
                    continue
                fa = fas[impl]
                set_options(fa, var)
                bwd = var == ("raw_max" if "raw_max" in VARIANTS else next(iter(VARIANTS))) and shape in BWD_SHAPES
                q, k, v = inputs(shape, grad=bwd)
                row = {"impl": impl, "shape": shape, "variant": var}
                try:
                    with torch.no_grad():
                        o = call(fa, shape, q, k, v)
                        row["rel_err_vs_ref"] = ba.rel(o, refs[shape]) if shape in refs else None
                        row["nan"] = bool(o.isnan().any())
                        row["fwd_ms"] = ba.bench_ms(lambda: call(fa, shape, q, k, v))
                    row["fwd_tflops"] = flops(shape) / row["fwd_ms"] / 1e9
                    if bwd:
                        o = call(fa, shape, q, k, v)
                        do = torch.randn_like(o)
                        row["bwd_ms"] = ba.bench_ms(lambda: o.backward(do, retain_graph=True))
                        row["bwd_tflops"] = 2.5 * flops(shape) / row["bwd_ms"] / 1e9
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    traceback.print_exc()
                rows.append(row)
                print(f"  {impl} {shape:10s} {var:8s} " + " ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
                del q, k, v
        torch.cuda.empty_cache()
    for fa in fas.values():
        set_options(fa, next(iter(VARIANTS)))


def winners(fas):
    """The autotuner's pick per key, for the record."""
    out = {}
    for impl, fa in fas.items():
        for modname in ("_triton_fwd", "_triton_bwd"):
            mod = importlib.import_module(f"{fa.__name__}.{modname}")
            for fam, tuner in getattr(mod, "_tuned", {}).items():
                for key, cfg in getattr(tuner, "cache", {}).items():
                    out[f"{impl} {modname} {fam} {key}"] = str(cfg)
    return out


def host_overhead(fas, results):
    """Host time per call (no sync inside the loop, tiny shape): what a CPU-bound caller pays per attention call."""
    import torch.nn.functional as F
    q, k, v = (torch.randn(1, 128, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    fns = {"sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)}
    fns.update({n: (lambda fa=fa: fa.flash_attn_func(q, k, v, causal=True)) for n, fa in fas.items()})
    out = {}
    for n, fn in fns.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            fn()
        out[n] = (time.perf_counter() - t) / 200 * 1e6
        torch.cuda.synchronize()
    results["host_us_per_call"] = out
    print(f"  host us/call {out}", flush=True)


# ------------------------------------------------------------------------------------------------ phase 2

def e2e(fas, results, deadline):
    ids, prefill, ref, out = ba.e2e_setup()
    for name, fa in fas.items():
        impl = ba.register_kernel(name, fa)
        for var in VARIANTS:
            if time.time() > deadline:
                results.setdefault("skipped", []).append(f"e2e {name} {var}")
                continue
            set_options(fa, var)
            try:
                logits, ms = prefill(impl)
                out[f"{name}:{var}"] = {"ms": ms, "tokens_per_s": ids.numel() / ms * 1e3,
                                        "ratio_vs_sdpa": out["sdpa"]["ms"] / ms,
                                        "logits_rel_err_vs_sdpa": ba.rel(logits, ref),
                                        "argmax_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean())}
            except Exception as e:
                out[f"{name}:{var}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
                traceback.print_exc()
            print(f"  e2e {name}:{var} {out[f'{name}:{var}']}", flush=True)
        set_options(fa, next(iter(VARIANTS)))
    print(f"  e2e sdpa {out['sdpa']}", flush=True)
    results["e2e"] = out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--deadline", type=float, default=430, help="seconds; later steps are skipped past it")
    ap.add_argument("--variants", default="plain",
                    help="comma list of forward option sets (plain, raw_max, lazy: only in commit 083e4a6's kernel)")
    ap.add_argument("--child-check")
    ap.add_argument("--child-warm")
    args = ap.parse_args()
    for name in [v for v in VARIANTS if v not in args.variants.split(",")]:
        del VARIANTS[name]
    if args.child_check:
        path, name, parts = args.child_check.rsplit(":", 2)
        return run_check(path, name, tuple(parts.split(",")))
    if args.child_warm:
        return run_warm(args.child_warm.split(","))
    import triton
    t0 = time.time()
    deadline = t0 + args.deadline
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
               "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "variants": VARIANTS,
               "shapes": {k: list(v) for k, v in SHAPES.items()}}
    path = args.out / "results.json"

    def save(step):
        results.setdefault("elapsed_s", {})[step] = round(time.time() - t0, 1)
        path.write_text(json.dumps(results, indent=1, default=str))

    print("== phase 0: check + warm-up compiles (parallel)", flush=True)
    phase0(args, results, args.out)
    save("phase0")
    for r in results.get("check", []):
        print(f"  {r['kernel']} {r['case']:60s} {'ok' if r['ok'] else 'BAD'}", flush=True)
    fas = kernels()
    print("== phase 1: anchors and ours", flush=True)
    try:
        refs = anchors(results)
        save("anchors")
        ours(fas, refs, results, deadline)
        results["autotune_winners"] = winners(fas)
        host_overhead(fas, results)
    except Exception as e:
        results["phase1_error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
    save("phase1")
    if not args.skip_e2e:
        print("== phase 2: e2e", flush=True)
        try:
            e2e(fas, results, deadline + 60)
        except Exception as e:
            results["e2e_error"] = f"{type(e).__name__}: {e}"[:500]
            traceback.print_exc()
    save("done")
    summary(results)


def summary(results):
    anc = {(r["impl"], r["shape"]): r for r in results.get("anchors", [])}
    print("\nshape       impl var      fwd_ms  TFLOP/s  vs_anchor  bwd TFLOP/s  rel_err")
    for r in results.get("ours", []):
        a = anc.get(("sdpa_cudnn" if r["impl"] == "fa3" else "sdpa_flash", r["shape"])) or anc.get(("flex", r["shape"]))
        ratio = (a["fwd_ms"] / r["fwd_ms"]) if a and r.get("fwd_ms") and a.get("fwd_ms") else float("nan")
        print(f"{r['shape']:11s} {r['impl']} {r['variant']:8s} {r.get('fwd_ms', float('nan')):7.3f} "
              f"{r.get('fwd_tflops', 0):7.0f}  {ratio:8.2f}  {r.get('bwd_tflops', 0):9.0f}  {r.get('rel_err_vs_ref')}")
    for (impl, shape), a in anc.items():
        print(f"anchor {impl:10s} {shape:10s} fwd {a.get('fwd_ms', 0):.3f} ms {a.get('fwd_tflops', 0):.0f} "
              f"bwd {a.get('bwd_tflops', 0):.0f}")
    e = results.get("e2e", {})
    for k, v in e.items():
        if isinstance(v, dict):
            print(f"e2e {k}: {v}")
    print("check:", sum(r["ok"] for r in results.get("check", [])), "/", len(results.get("check", [])), "ok",
          results.get("check_error", ""))
    print("elapsed", results.get("elapsed_s"))


if __name__ == "__main__":
    main()
