#!/usr/bin/env python3
"""GPU check and benchmark of flash-attn2 (Triton) and flash-attn3 (Triton, Hopper TMA) against SDPA-flash,
SDPA-cuDNN and FlexAttention, in one process on one GPU.

    python scripts/bench_attention.py --out DIR [--skip-check] [--skip-e2e]

1. check: float64 reference on fresh random inputs (forward, lse, gradients, varlen with random cu_seqlens, paged
   kv-cache with random block tables, windows, softcap, GQA, head dims 64/96/128/256); outputs land on memory
   poisoned with NaN first, so an unwritten element shows up as NaN.
2. bench: bf16, batch*seq = 16k tokens, 16 heads x 128, seq 1k..16k, causal and not, forward and backward; sliding
   window seq 16k W 4096 causal forward. TFLOP/s: 4*b*h*sq*sk*d forward (exact visible-pair count for causal and
   windows), backward 2.5x forward. Median of triton.testing.do_bench.
3. e2e: Llama-style 1B-shape model (random weights, local config), prefill tokens/s and logits vs sdpa, attention
   routed through kernel_loader.adapters.adapt on the kernel package imported directly (no Hub, no `kernels`).
Writes DIR/results.json, DIR/BENCHMARKS.md (table) and DIR/attention.png (if matplotlib is there).
"""

import argparse
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernel_loader.reference import flash_visible_pairs  # noqa: E402


def import_kernel(repo: str, package: str, namespace: str):
    """The kernel's torch-ext package as a top-level module, with an `_ops.py` naming a namespace (no library)."""
    tmp = Path(tempfile.mkdtemp()) / namespace
    shutil.copytree(ROOT / "kernel_repos" / repo / "torch-ext" / package, tmp,
                    ignore=shutil.ignore_patterns("__pycache__", "_ops.py"))
    (tmp / "_ops.py").write_text(f"ops = None\n\n\ndef add_op_namespace_prefix(op_name):\n"
                                 f"    return f\"{namespace}::{{op_name}}\"\n")
    spec = importlib.util.spec_from_file_location(namespace, tmp / "__init__.py",
                                                  submodule_search_locations=[str(tmp)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[namespace] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------- reference

def ref_attention(q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None):
    """float64 (B, S, H, D) -> out (B, Sq, Hq, D), lse (B, Hq, Sq); bottom-right; empty rows 0 / -inf."""
    from kernel_loader.reference import attention_reference

    return attention_reference(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale, return_lse=True)


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def poison():
    """Fill free allocator memory with NaN so outputs that are not written show up."""
    if not torch.cuda.is_available():
        return
    free = torch.cuda.mem_get_info()[0]
    n = int(min(free * 0.5, 8 << 30)) // 4
    torch.full((n,), float("nan"), device="cuda").view(-1)
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------- check

def check(fa, name, results, dev="cuda", parts=("dense", "varlen", "kvcache")):
    """``dev="cpu"``: a dry run of this script through Triton's interpreter (TRITON_INTERPRET=1,
    FLASH_ATTN2_CPU_IMPL=triton), bf16 swapped for fp16 (the interpreter mishandles bf16 dots)."""
    torch.manual_seed(1234)
    if dev == "cpu":
        real_randn = torch.randn

        def randn(*a, dtype=None, device=None, **kw):  # noqa: the interpreter cannot do bf16 dots
            return real_randn(*a, dtype=torch.float16 if dtype == torch.bfloat16 else dtype, device=device, **kw)
        torch.randn = randn
    try:
        _check(fa, name, results, dev, parts)
    finally:
        if dev == "cpu":
            torch.randn = real_randn


def _check(fa, name, results, dev, parts):
    rows = []

    def record(case, **errs):
        ok = all(math.isfinite(e) and e < 2e-2 for e in errs.values())
        rows.append({"kernel": name, "case": case, "ok": ok, **{k: round(v, 6) for k, v in errs.items()}})
        results.setdefault("check", []).append(rows[-1])
        print(f"  {name:4s} {case:48s} {'ok ' if ok else 'BAD'} " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()),
              flush=True)

    dense_cases = [  # b, sq, sk, hq, hk, d, causal, window, softcap, dtype
        (2, 333, 333, 4, 4, 128, False, (-1, -1), 0.0, torch.bfloat16),
        (2, 333, 333, 8, 2, 128, True, (-1, -1), 0.0, torch.bfloat16),
        (1, 200, 517, 4, 1, 64, True, (-1, -1), 0.0, torch.float16),
        (1, 517, 200, 4, 2, 64, True, (-1, -1), 0.0, torch.bfloat16),   # Sq > Sk: empty rows
        (1, 700, 700, 4, 2, 96, False, (100, 30), 0.0, torch.bfloat16),
        (1, 640, 640, 2, 2, 256, True, (128, -1), 30.0, torch.bfloat16),
        (2, 257, 257, 4, 4, 128, False, (-1, -1), 20.0, torch.float16),
    ]
    for b, sq, sk, hq, hk, d, causal, window, softcap, dt in (dense_cases if "dense" in parts else []):
        q = torch.randn(b, sq, hq, d, device=dev, dtype=dt, requires_grad=True)
        k = torch.randn(b, sk, hk, d, device=dev, dtype=dt, requires_grad=True)
        v = torch.randn(b, sk, hk, d, device=dev, dtype=dt, requires_grad=True)
        poison()
        kwargs = dict(causal=causal, window_size=window, softcap=softcap)
        if name == "fa3":
            out, lse = fa.flash_attn_func(q, k, v, return_attn_probs=True, **kwargs)
        else:
            out, lse = fa.flash_attn_func(q, k, v, return_softmax_lse=True, **kwargs)
        dout = torch.randn_like(out)
        poison()
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        ro, rl = ref_attention(q64, k64, v64, causal, window, softcap)
        rq, rk, rv = torch.autograd.grad(ro, (q64, k64, v64), dout.double())
        fin = torch.isfinite(rl)
        lse_err = float((lse[fin] - rl[fin]).abs().max()) if fin.any() else 0.0
        lse_empty_ok = bool((lse[~fin] == float("-inf")).all())
        nan = any(bool(t.isnan().any()) for t in (out, dq, dk, dv))
        record(f"dense b{b} {sq}x{sk} h{hq}/{hk} d{d} c{int(causal)} w{window} cap{softcap} {str(dt)[6:]}",
               out=rel(out, ro), lse_abs=lse_err if lse_empty_ok else float("nan"), dq=rel(dq, rq), dk=rel(dk, rk),
               dv=rel(dv, rv), nan=float("nan") if nan else 0.0)

    # varlen, random cu_seqlens, trailing packed rows
    for causal, window in ((True, (-1, -1)), (False, (64, 64))) if "varlen" in parts else ():
        lens_q = torch.randint(1, 400, (5,)).tolist()
        lens_k = [lq if causal else int(torch.randint(1, 400, ())) for lq in lens_q]
        cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device=dev)
        cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device=dev)
        q = torch.randn(int(cu_q[-1]) + 7, 8, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(int(cu_k[-1]), 2, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn_like(k, requires_grad=True)
        poison()
        out = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                        window_size=window)
        dout = torch.randn_like(out)
        poison()
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        errs = {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
        for i in range(len(lens_q)):
            sq_, sk_ = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
            q64, k64, v64 = (t.detach()[s][None].double().requires_grad_() for t, s in ((q, sq_), (k, sk_), (v, sk_)))
            ro, _ = ref_attention(q64, k64, v64, causal, window)
            g = torch.autograd.grad(ro, (q64, k64, v64), dout[sq_][None].double())
            errs["out"] = max(errs["out"], rel(out[sq_][None], ro))
            for key, got, want in (("dq", dq[sq_], g[0]), ("dk", dk[sk_], g[1]), ("dv", dv[sk_], g[2])):
                errs[key] = max(errs[key], rel(got[None], want))
        tail = float(out[int(cu_q[-1]):].abs().max()) + float(dq[int(cu_q[-1]):].abs().max())
        record(f"varlen lens={lens_q} c{int(causal)} w{window}", **errs, tail=tail,
               nan=float("nan") if any(bool(t.isnan().any()) for t in (out, dq, dk, dv)) else 0.0)

    # kv cache with append: paged (random block table; pages shared by no one, tokens left in the last page) and
    # contiguous; prefill-chunk (3 new tokens) and decode (1); the cache must hold the appended tokens afterwards.
    hq, hk, d, page = 16, 4, 128, 64
    for paged, b, sq, window in ((True, 4, 3, (-1, -1)), (True, 4, 3, (100, 0)), (True, 5, 1, (-1, -1)),
                                 (False, 3, 3, (-1, -1)), (False, 3, 1, (50, 0))) if "kvcache" in parts else ():
        if paged:
            npages = 64
            kc = torch.randn(npages, page, hk, d, device=dev, dtype=torch.bfloat16)
            bt = torch.randperm(npages, device=dev)[: b * 8].view(b, 8).to(torch.int32)
        else:
            kc, bt = torch.randn(b, 8 * page, hk, d, device=dev, dtype=torch.bfloat16), None
        vc = torch.randn_like(kc)
        seqlens = torch.randint(0, 8 * page - sq, (b,), device=dev, dtype=torch.int32)
        qn = torch.randn(b, sq, hq, d, device=dev, dtype=torch.bfloat16)
        kn = torch.randn(b, sq, hk, d, device=dev, dtype=torch.bfloat16)
        vn = torch.randn(b, sq, hk, d, device=dev, dtype=torch.bfloat16)
        kc0, vc0 = kc.clone(), vc.clone()
        poison()
        kw = dict(cache_seqlens=seqlens, causal=True, window_size=window, return_softmax_lse=True)
        if paged:
            kw["page_table" if name == "fa3" else "block_table"] = bt
        out, lse = fa.flash_attn_with_kvcache(qn, kc, vc, kn, vn, **kw)
        err, lse_err, appended = 0.0, 0.0, True
        for i in range(b):
            n = int(seqlens[i]) + sq
            idx = torch.arange(n, device=dev)
            at, slots = (bt[i].long()[idx // page], idx % page) if paged else (torch.full_like(idx, i), idx)
            kk, vv = kc0[at, slots].clone(), vc0[at, slots].clone()
            kk[-sq:], vv[-sq:] = kn[i], vn[i]
            appended &= bool(torch.equal(kc[at, slots], kk) and torch.equal(vc[at, slots], vv))
            ro, rl = ref_attention(qn[i:i + 1], kk[None], vv[None], True, window)
            err = max(err, rel(out[i:i + 1], ro))
            lse_err = max(lse_err, float((lse[i:i + 1].double() - rl).abs().max()))
        record(f"kvcache {'paged' if paged else 'contig'} b{b} new{sq} seqlens={seqlens.tolist()} w{window}",
               out=err, lse_abs=lse_err, appended=0.0 if appended else float("nan"),
               nan=float("nan") if bool(out.isnan().any()) else 0.0)


# ----------------------------------------------------------------------------------------------- bench

def bench_ms(fn):
    import triton
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")



def bench(fas, results, seqs):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        import torch._dynamo.config as dcfg
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(dcfg, knob):  # one compile per shape/mask here; never fall back to eager flex
                setattr(dcfg, knob, 256)
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception:
        flex = None
    h, d, tokens = 16, 128, 16384
    rows = []

    def run(label, impl, b, s, causal, fwd_fn, window=(-1, -1), do_bwd=True):
        flops = 4.0 * b * h * d * flash_visible_pairs(s, s, causal=causal, window=window)
        row = {"impl": label, "seq": s, "batch": b, "causal": causal, "window": list(window)}
        try:
            out = fwd_fn()
            if isinstance(out, tuple):
                out = out[0]
            row["fwd_ms"] = bench_ms(fwd_fn)
            row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
            if do_bwd:
                out = fwd_fn()
                out = out[0] if isinstance(out, tuple) else out
                dout = torch.randn_like(out)
                row["bwd_ms"] = bench_ms(lambda: out.backward(dout, retain_graph=True))
                row["bwd_tflops"] = 2.5 * flops / row["bwd_ms"] / 1e9
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        rows.append(row)
        print(f"  {label:10s} s={s:6d} b={b:2d} c={int(causal)} w={window} " + " ".join(
            f"{k}={v:.1f}" for k, v in row.items() if k.endswith("tflops")) + (f" ERR {row.get('error')}"
                                                                              if "error" in row else ""), flush=True)
        return row

    for s in seqs:
        b = max(1, tokens // s)
        for causal in (False, True):
            torch.manual_seed(s)
            q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))  # (B, H, S, D) views
            ref_out = None
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ref_out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)
            for name, fa in fas.items():
                r = run(name, fa, b, s, causal, lambda fa=fa: fa.flash_attn_func(q, k, v, causal=causal))
                with torch.no_grad():
                    r["rel_err_vs_sdpa_flash"] = rel(fa.flash_attn_func(q, k, v, causal=causal), ref_out)
            for label, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def f(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                run(label, None, b, s, causal, f)
            if flex is not None:
                mask = None
                if causal:
                    mask = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, s, s, device="cuda")
                run("flex", None, b, s, causal, lambda mask=mask: flex(qt, kt, vt, block_mask=mask))
            del q, k, v, qt, kt, vt, ref_out
            torch.cuda.empty_cache()

    # sliding window 16k, W 4096, causal forward
    s, w = 16384, 4096
    q, k, v = (torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    win = (w - 1, 0)
    for name, fa in fas.items():
        r = run(name, fa, 1, s, True, lambda fa=fa: fa.flash_attn_func(q, k, v, causal=True, window_size=win),
                window=win, do_bwd=False)
        if "error" not in r:
            ro = flex(qt, kt, vt, block_mask=create_block_mask(
                lambda b_, h_, qi, ki: (qi >= ki) & (qi - ki < w), None, None, s, s, device="cuda")).transpose(1, 2) \
                if flex is not None else None
            if ro is not None:
                r["rel_err_vs_flex"] = rel(fa.flash_attn_func(q, k, v, causal=True, window_size=win), ro)
    if flex is not None:
        wmask = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (qi - ki < w), None, None, s, s, device="cuda")
        run("flex", None, 1, s, True, lambda: flex(qt, kt, vt, block_mask=wmask), window=win, do_bwd=False)
    results["bench"] = rows


# ----------------------------------------------------------------------------------------------- e2e

def e2e_setup():
    """The Llama 1B-shape model, its 4096-token prompt, a prefill(impl) -> (logits, ms) timer, and the sdpa and
    eager (bf16 noise floor) rows. Shared with bench_attention_followup.py."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=8192, rope_theta=500000.0,
                      head_dim=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 4096), device="cuda")
    out = {"model": "Llama 1B shape (hidden 2048, 16 layers, 32 q / 8 kv heads, head dim 64), random weights",
           "tokens": int(ids.numel()), "how": "kernel package imported directly; kernel_loader.adapters.adapt; "
                                              "registered with AttentionInterface + flash mask"}

    def prefill(impl):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            logits = model(ids).logits
            ms = bench_ms(lambda: model(ids))
        return logits.float(), ms

    ref, ms = prefill("sdpa")
    out["sdpa"] = {"ms": ms, "tokens_per_s": ids.numel() / ms * 1e3}
    try:  # the bf16 noise floor: transformers' own eager attention against sdpa
        eager, ms = prefill("eager")
        out["eager"] = {"ms": ms, "logits_rel_err_vs_sdpa": rel(eager, ref),
                        "argmax_agreement": float((eager.argmax(-1) == ref.argmax(-1)).float().mean())}
        del eager
    except Exception as e:
        out["eager"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return ids, prefill, ref, out


def register_kernel(name, fa):
    """Register a kernel package's adapted attention (and transformers' flash mask) as ``kl_<name>``."""
    try:
        from transformers import AttentionMaskInterface
    except ImportError:
        from transformers.masking_utils import AttentionMaskInterface
    from transformers import AttentionInterface

    from kernel_loader import adapters
    from kernel_loader.spec import parse_spec

    attention, _, _ = adapters.adapt(fa, parse_spec(f"kernels-community/flash-attn{name[-1]}"), "cuda")
    AttentionInterface.register(f"kl_{name}", attention)
    flash_mask = AttentionMaskInterface._global_mapping.get("flash_attention_2")
    if flash_mask is not None:
        AttentionMaskInterface.register(f"kl_{name}", flash_mask)
    return f"kl_{name}"


def e2e(fas, results):
    ids, prefill, ref, out = e2e_setup()
    for name, fa in fas.items():
        try:
            logits, ms = prefill(register_kernel(name, fa))
            out[name] = {"ms": ms, "tokens_per_s": ids.numel() / ms * 1e3, "logits_rel_err_vs_sdpa": rel(logits, ref),
                         "logits_max_abs_diff": float((logits - ref).abs().max()),
                         "argmax_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean())}
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            traceback.print_exc()
        print(f"  e2e {name}: {out[name]}", flush=True)
    print(f"  e2e sdpa: {out['sdpa']}", flush=True)
    results["e2e"] = out


# ----------------------------------------------------------------------------------------------- report

def table(results):
    bench = results.get("bench", [])
    lines = [f"Device: {results['device']}; torch {results['torch']}, CUDA {results['cuda']}, "
             f"Triton {results['triton']}. bf16, 16 heads x 128, batch*seq = 16k tokens. TFLOP/s (median).", "",
             "| seq | causal | pass | fa2 | fa3 | sdpa_flash | sdpa_cudnn | flex | fa2/flash | fa3/cudnn |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["impl"], r["seq"], r["causal"], tuple(r["window"])): r for r in bench}
    for s in sorted({r["seq"] for r in bench if r["window"] == [-1, -1]}):
        for causal in (False, True):
            for p in ("fwd", "bwd"):
                vals = {i: keyed.get((i, s, causal, (-1, -1)), {}).get(f"{p}_tflops")
                        for i in ("fa2", "fa3", "sdpa_flash", "sdpa_cudnn", "flex")}
                fmt = {i: f"{v:.0f}" if v else "-" for i, v in vals.items()}
                r1 = f"{vals['fa2'] / vals['sdpa_flash']:.2f}" if vals["fa2"] and vals["sdpa_flash"] else "-"
                r2 = f"{vals['fa3'] / vals['sdpa_cudnn']:.2f}" if vals["fa3"] and vals["sdpa_cudnn"] else "-"
                lines.append(f"| {s} | {causal} | {p} | {fmt['fa2']} | {fmt['fa3']} | {fmt['sdpa_flash']} | "
                             f"{fmt['sdpa_cudnn']} | {fmt['flex']} | {r1} | {r2} |")
    lines += ["", "Sliding window, seq 16384, W 4096, causal, forward:", "", "| impl | ms | TFLOP/s |", "|---|---|---|"]
    for r in bench:
        if r["window"] != [-1, -1]:
            lines.append(f"| {r['impl']} | {r.get('fwd_ms', float('nan')):.3f} | {r.get('fwd_tflops', 0):.0f} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bench = [r for r in results.get("bench", []) if r["window"] == [-1, -1]]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (causal, p) in zip(axes.flat, [(False, "fwd"), (True, "fwd"), (False, "bwd"), (True, "bwd")]):
        for impl in ("fa2", "fa3", "sdpa_flash", "sdpa_cudnn", "flex"):
            pts = sorted((r["seq"], r.get(f"{p}_tflops")) for r in bench
                         if r["impl"] == impl and r["causal"] == causal and r.get(f"{p}_tflops"))
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{p} {'causal' if causal else 'non-causal'}")
        ax.set_xlabel("seq")
        ax.set_ylabel("TFLOP/s")
        ax.legend()
    fig.suptitle(results["device"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--seqs", default="1024,2048,4096,8192,16384", help="comma list; empty: window case only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import triton
    results = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
               "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__}
    fas = {"fa2": import_kernel("flash-attn2", "flash_attn2", "_flash_attn2_bench"),
           "fa3": import_kernel("flash-attn3", "flash_attn3", "_flash_attn3_bench")}
    t0 = time.time()
    path = args.out / "results.json"

    def save():
        results["elapsed_s"] = round(time.time() - t0, 1)
        path.write_text(json.dumps(results, indent=1, default=str))

    for step, fn in (("check", lambda: [check(fa, n, results) for n, fa in fas.items()]),
                     ("bench", lambda: bench(fas, results, [int(s) for s in args.seqs.split(",") if s])),
                     ("e2e", lambda: e2e(fas, results))):
        if getattr(args, f"skip_{step}"):
            continue
        print(f"== {step} ({time.time() - t0:.0f}s)", flush=True)
        try:
            fn()
        except Exception as e:
            results[f"{step}_error"] = f"{type(e).__name__}: {e}"[:500]
            traceback.print_exc()
        save()
    (args.out / "BENCHMARKS.md").write_text(table(results))
    plot(results, args.out / "attention.png")
    save()
    print(table(results))


if __name__ == "__main__":
    main()
