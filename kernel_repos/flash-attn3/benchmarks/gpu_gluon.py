#!/usr/bin/env python3
"""The Gluon Hopper forward of flash-attn3 on an H200, in one run (about 3-4 minutes):

1. compile: every config a dispatch can pick (head dim 64/128/256 x bf16/fp16 x mask flags) and the ablation
   variants, for sm_90a through ``triton.compile`` (no GPU needed); per config: registers, shared memory, spills
   (ptxas -v), and the SASS instructions that make it a Hopper kernel (HGMMA, UTMALDG, USETMAXREG values).
2. check (child process, so a hang or a fault is recorded, not fatal): the Gluon forward against float64 on fresh
   random inputs, outputs NaN-poisoned first (every element must be written): dense, GQA, MQA, causal, sliding
   windows, Sq != Sk (rows that see no key: out 0, lse -inf), head dims 64/128/256, bf16/fp16; the interface's
   dispatch (Gluon on supported inputs; softcap and odd strides to the Triton tl kernel, also checked).
3. bench (child process): 16 heads x 128, seq 16384, bf16, causal and not, Gluon vs SDPA-cuDNN, SDPA-flash,
   FlexAttention and the Triton tl flash-attn3 kernel (anchors in the same run); sliding window 16k / W 4096
   causal; ablations (no ping-pong, no softmax/P@V overlap, both off, 1 and 3 stages, 64-key tiles).

Writes $OUT/gpu_gluon.json, $OUT/gpu_gluon.log and the dispatch configs' sm_90a cubins under $OUT/cubins;
prints a short table last.
``--dry-run``: step 1 only (runs on a machine without a GPU).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "torch-ext"))
sys.path.insert(0, str(HERE.parents[2]))  # the checkout: kernel_loader.reference (float64, flash semantics)
os.environ.pop("TRITON_INTERPRET", None)  # Gluon kernels do not run under Triton's interpreter

import torch  # noqa: E402

from kernel_loader.reference import attention_reference, flash_visible_pairs  # noqa: E402

OUT = Path(os.environ.get("OUT", HERE / "out"))
LOG = OUT / "gpu_gluon.log"
T0 = time.time()


def log(msg: str):
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


def err_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:400] if str(e).strip() else ''}"


# ------------------------------------------------------------------------------------------ 1. compile
def all_configs():
    from flash_attn3 import _gluon_launch as L
    cfgs = []
    for d in L.HEAD_DIMS:
        for dt in L.DTYPES:
            for hl, hr in ((False, False), (False, True), (True, True)):
                cfgs.append(("dispatch", L.config_for(d, dt, hl, hr)))
    for causal in (False, True):
        for v in ablation_variants(causal):
            cfgs.append(("ablation", v[1]))
    seen, out = set(), []
    for role, c in cfgs:
        if c not in seen:
            seen.add(c)
            out.append((role, c))
    return out


def ablation_variants(causal: bool, window: bool = False):
    from flash_attn3 import _gluon_launch as L
    base = L.config_for(128, torch.bfloat16, window, causal or window)
    return [("base", base), ("no_pingpong", replace(base, pingpong=False)),
            ("no_overlap", replace(base, overlap=False)),
            ("no_pingpong_no_overlap", replace(base, pingpong=False, overlap=False)),
            ("stages1", replace(base, stages=1)), ("stages3", replace(base, stages=3)),
            ("block_n64", replace(base, block_n=64)), ("unroll2", replace(base, unroll=2)),
            ("block_n64_unroll2", replace(base, block_n=64, unroll=2))]


def _nvidia_bin(tool: str) -> str:
    import triton.backends.nvidia as nv
    return str(Path(nv.__file__).parent / "bin" / tool)


def inspect_cubin(k, cfg, cubin_dir: Path, keep: bool = True) -> dict:
    """Resources and the Hopper instructions of one compiled kernel (its cubin stays in cubin_dir if keep)."""
    name = cfg.name
    cubin = cubin_dir / f"{name}.cubin"
    cubin.write_bytes(k.asm["cubin"])
    ptx = cubin_dir / f"{name}.ptx"
    ptx.write_text(k.asm["ptx"])
    res = subprocess.run([_nvidia_bin("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    sass = subprocess.run([_nvidia_bin("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    pv = subprocess.run([_nvidia_bin("ptxas"), "-v", "--gpu-name", "sm_90a", "-maxrregcount", str(cfg.maxnreg),
                         str(ptx), "-o", os.devnull], capture_output=True, text=True).stderr
    ptx.unlink()
    if not keep:
        cubin.unlink()
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", pv)
    setmax = sorted({(kind, int(n)) for kind, n in re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)",
                                                              k.asm["ptx"])})
    # The softmax under P@V: exp2 (MUFU.EX2) count between each 'wait for the scores' (DEPBAR.LE gsb0, 0x1) and
    # the next 'wait for P@V' (0x0). 0 means ptxas moved the P@V wait above the softmax: no intra-warpgroup overlap.
    under_pv, window = [], None
    for ins in re.findall(r"(WARPGROUP\.DEPBAR\.LE gsb0, 0x\d|MUFU\.EX2)", sass):
        if ins.endswith("0x1"):
            window = 0
        elif ins.endswith("0x0"):
            if window is not None:
                under_pv.append(window)
            window = None
        elif window is not None:
            window += 1
    return {
        "launch_regs": int(m.group(1)) if m else None, "stack": int(m.group(2)) if m else None,
        "local": int(m.group(4)) if m else None, "shared_bytes": k.metadata.shared,
        "spill_stores": int(spill.group(1)) if spill else None, "spill_loads": int(spill.group(2)) if spill else None,
        "setmaxnreg": [f"{kind} {n}" for kind, n in setmax],
        "partition_regs": {"consumers": cfg.consumer_regs, "producer": cfg.producer_regs},
        "num_warps_total": k.metadata.num_warps,
        "sass": {"HGMMA": sass.count("HGMMA."), "UTMALDG": sass.count("UTMALDG"),
                 "USETMAXREG": len(re.findall(r"USETMAXREG", sass)), "STL": sass.count(" STL"),
                 "LDL": sass.count(" LDL"), "ex2_between_score_wait_and_pv_wait": under_pv},
    }


def _compile_one(role, cfg, cubin_dir: Path) -> dict:
    from flash_attn3 import _gluon_launch as L
    t = time.time()
    row = {"config": cfg.name, "role": role, **asdict(cfg)}
    try:
        k = L.compile_for_target(cfg, 90)
        row.update(ok=True, compile_s=round(time.time() - t, 2),
                   **inspect_cubin(k, cfg, cubin_dir, keep=role == "dispatch"))
        row["hopper_ok"] = (row["spill_stores"] == 0 and row["sass"]["HGMMA"] > 0 and row["sass"]["UTMALDG"] > 0
                            and row["sass"]["USETMAXREG"] > 0)
    except Exception as e:
        row.update(ok=False, error=err_text(e), compile_s=round(time.time() - t, 2))
    return row


def compile_all(results: dict):
    """Every config, compiled in parallel processes (spawned: this process may hold a CUDA context)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    cubin_dir = OUT / "cubins"
    cubin_dir.mkdir(parents=True, exist_ok=True)
    cfgs = all_configs()
    workers = max(1, min(len(cfgs), (os.cpu_count() or 2) - 1, 12))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        rows = list(pool.map(_compile_one, *zip(*[(role, cfg, cubin_dir) for role, cfg in cfgs])))
    for row in rows:
        if row["ok"]:
            log(f"compile {row['config']:34s} ok  smem {row['shared_bytes']:6d}  spill {row['spill_stores']}  "
                f"HGMMA {row['sass']['HGMMA']} UTMALDG {row['sass']['UTMALDG']} setmaxnreg {row['setmaxnreg']} "
                f"ex2 under P@V {row['sass']['ex2_between_score_wait_and_pv_wait']}")
        else:
            log(f"compile {row['config']:34s} FAILED {row['error']}")
    results["compile"] = rows


# -------------------------------------------------------------------------------------------- 2. check
def reference(q, k, v, scale, causal, window, softcap=0.0):
    """float64 (out, lse), flash_attn semantics: kernel_loader.reference, the package's one reference."""
    return attention_reference(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale, return_lse=True)


CASES = [  # (name, B, Sq, Sk, Hq, Hk, D, dtype, causal, window)
    ("dense_d128_bf16", 2, 1000, 1000, 8, 8, 128, "bf16", False, (-1, -1)),
    ("causal_d128_bf16", 2, 1024, 1024, 8, 8, 128, "bf16", True, (-1, -1)),
    ("gqa4_causal_d128", 2, 777, 777, 8, 2, 128, "bf16", True, (-1, -1)),
    ("mqa_d64_fp16", 1, 513, 513, 8, 1, 64, "fp16", False, (-1, -1)),
    ("sq<sk_causal_d128", 2, 300, 1100, 4, 4, 128, "bf16", True, (-1, -1)),
    ("sq>sk_causal_d64 (empty rows)", 1, 1100, 300, 4, 4, 64, "bf16", True, (-1, -1)),
    ("window255_causal_d128", 1, 2048, 2048, 4, 4, 128, "bf16", True, (255, 0)),
    ("window100_50_gqa_d128", 1, 1500, 1500, 4, 2, 128, "fp16", False, (100, 50)),
    ("window_left_only_d64", 1, 1300, 1700, 4, 4, 64, "bf16", False, (200, -1)),
    ("dense_d256_bf16", 1, 700, 900, 4, 4, 256, "bf16", False, (-1, -1)),
    ("causal_d256_fp16", 2, 640, 640, 4, 2, 256, "fp16", True, (-1, -1)),
    ("causal_d64_bf16_short", 3, 37, 37, 2, 2, 64, "bf16", True, (-1, -1)),
]
TOL = {"bf16": 2.5e-2, "fp16": 4e-3}


def compare(out, lse, ref_out, ref_lse, dtype) -> dict:
    finite = bool(torch.isfinite(out).all())
    empty = torch.isinf(ref_lse)  # (B, H, Sq): rows that see no key
    o_err = float((out.double() - ref_out).abs().max())
    lse_ok = bool((torch.isinf(lse) == empty).all())
    lse_err = float((lse.double() - ref_lse).masked_fill(empty, 0).abs().max())
    ok = finite and lse_ok and o_err <= TOL[dtype] and lse_err <= 2e-3
    return {"ok": ok, "all_written_finite": finite, "max_abs_err_out": o_err, "max_abs_err_lse": lse_err,
            "empty_rows_lse_inf": lse_ok, "tol_out": TOL[dtype]}


def rand_inputs(b, sq, sk, hq, hk, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return (torch.randn(b, sq, hq, d, device="cuda", dtype=dt, generator=g),
            torch.randn(b, sk, hk, d, device="cuda", dtype=dt, generator=g),
            torch.randn(b, sk, hk, d, device="cuda", dtype=dt, generator=g))


def check_case(case, cfg_override=None, seed=0) -> dict:
    from flash_attn3 import _gluon_launch as L
    _, b, sq, sk, hq, hk, d, dtype, causal, window = case
    q, k, v = rand_inputs(b, sq, sk, hq, hk, d, dtype, seed)
    scale = d ** -0.5
    out = torch.full_like(q, float("nan"))  # every element must be written
    o, lse = L.forward(q, k, v, scale=scale, causal=causal, window=window, cfg=cfg_override, out=out)
    torch.cuda.synchronize()
    ref_o, ref_lse = reference(q, k, v, scale, causal, window)
    return compare(o, lse, ref_o, ref_lse, dtype)


def check_interface() -> list:
    """The public flash_attn_func: Gluon on supported inputs, the tl kernel for softcap and odd strides."""
    import flash_attn3
    from flash_attn3 import _gluon_launch as L
    rows = []
    q, k, v = rand_inputs(1, 600, 600, 4, 2, 128, "bf16", 7)
    for label, kw, want_gluon in (("plain causal", dict(causal=True), True),
                                  ("softcap 30", dict(causal=True, softcap=30.0), False)):
        try:
            reason = L.unsupported_reason(q, k, v, kw.get("softcap", 0.0))
            out, lse = flash_attn3.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
            torch.cuda.synchronize()
            if "softcap" in kw:
                ref_o, ref_lse = reference(q, k, v, q.shape[-1] ** -0.5, True, (-1, -1), kw["softcap"])
            else:
                ref_o, ref_lse = reference(q, k, v, 128 ** -0.5, True, (-1, -1))
            r = compare(out, lse, ref_o, ref_lse, "bf16")
            r.update(case=f"interface: {label}", gluon=reason is None, expected_gluon=want_gluon)
            r["ok"] = r["ok"] and (reason is None) == want_gluon
        except Exception as e:
            r = {"case": f"interface: {label}", "ok": False, "error": err_text(e)}
        rows.append(r)
    # gradients through the Gluon forward (the tl backward reads its out and lse)
    try:
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out = flash_attn3.flash_attn_func(qg, kg, vg, causal=True)
        dout = torch.randn_like(out)
        out.backward(dout)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref_o, _ = reference(q64, k64, v64, 128 ** -0.5, True, (-1, -1))
        ref_o.backward(dout.double())
        rel = {n: float((a.grad.double() - b.grad).norm() / b.grad.norm())
               for n, a, b in (("dq", qg, q64), ("dk", kg, k64), ("dv", vg, v64))}
        rows.append({"case": "interface: backward after the Gluon forward", "rel_err": rel,
                     "ok": all(x < 2e-2 for x in rel.values())})
    except Exception as e:
        rows.append({"case": "interface: backward after the Gluon forward", "ok": False, "error": err_text(e)})
    # (B, H, S, D) storage seen as (B, S, H, D): heads not adjacent, so the tl kernel takes it
    try:
        qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        reason = L.unsupported_reason(qt, kt, vt, 0.0)
        out = flash_attn3.flash_attn_func(qt, kt, vt, causal=True)
        ref_o, ref_lse = reference(q, k, v, 128 ** -0.5, True, (-1, -1))
        err = float((out.double() - ref_o).abs().max())
        rows.append({"case": "interface: (B,H,S,D) strides", "gluon": reason is None, "reason": reason,
                     "max_abs_err_out": err, "ok": reason is not None and err <= TOL["bf16"]})
    except Exception as e:
        rows.append({"case": "interface: (B,H,S,D) strides", "ok": False, "error": err_text(e)})
    return rows



def phase_check(part: Path):
    rows = []
    for case in CASES:
        try:
            r = check_case(case)
        except Exception as e:
            r = {"ok": False, "error": err_text(e), "trace": traceback.format_exc()[-1500:]}
        r["case"] = case[0]
        rows.append(r)
        errs = {k: v for k, v in r.items() if k in ("max_abs_err_out", "max_abs_err_lse", "error")}
        log(f"check {case[0]:32s} {'ok' if r['ok'] else 'WRONG'} {json.dumps(errs)}")
        part.write_text(json.dumps(rows, indent=1))
    rows += check_interface()
    for r in rows[-4:]:
        log(f"check {r['case']:32s} {'ok' if r['ok'] else 'WRONG'} {r.get('error', '')}")
    part.write_text(json.dumps(rows, indent=1))
    for causal in (True, ):  # (time: the bench trusts a variant's causal check for its full-attention run too)
        for label, cfg in ablation_variants(causal)[1:]:
            case = ("ablation " + label + (" causal" if causal else ""), 1, 1536, 1536, 4, 4, 128, "bf16", causal,
                    (-1, -1))
            try:
                r = check_case(case, cfg_override=cfg)
            except Exception as e:
                r = {"ok": False, "error": err_text(e)}
            r["case"] = case[0]
            rows.append(r)
            part.write_text(json.dumps(rows, indent=1))
            log(f"check {case[0]:32s} {'ok' if r['ok'] else 'WRONG'}")


# -------------------------------------------------------------------------------------------- 3. bench
def bench_ms(fn):
    import triton
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")



def phase_bench(part: Path, budget_s: float):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from flash_attn3 import _gluon_launch as L
    from flash_attn3 import _triton_launch as TL
    rows = []
    t_end = time.time() + budget_s
    h, d, s = 16, 128, 16384

    def run(shape, impl, fn, pairs, extra=None):
        r = {"shape": shape, "impl": impl, **(extra or {})}
        if time.time() > t_end:
            r["error"] = "skipped: bench time budget spent"
        else:
            try:
                ms = bench_ms(fn)
                r.update(ms=ms, tflops=4.0 * h * d * pairs / ms / 1e9)
            except Exception as e:
                r["error"] = err_text(e)
        rows.append(r)
        log(f"bench {shape:22s} {impl:28s} " + (f"{r['ms']:.3f} ms {r['tflops']:.0f} TFLOP/s" if "ms" in r
                                                else r["error"]))
        part.write_text(json.dumps(rows, indent=1))
        return r

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as e:
        flex = None
        log(f"flex unavailable: {err_text(e)}")
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    scale = d ** -0.5
    shapes = {False: "s16k d128 full", True: "s16k d128 causal"}
    w = 4096
    win = (w - 1, 0)
    sw_shape = "s16k d128 SW4096 causal"
    masks = {}
    if flex is not None:
        try:
            masks[True] = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, s, s, device="cuda")
            masks["sw"] = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (qi - ki < w), None, None, s, s,
                                            device="cuda")
        except Exception as e:
            log(f"flex block masks failed: {err_text(e)}")
            flex = None
    # headline rows first (the time budget may not reach the ablations)
    for causal in (False, True):
        shape, pairs = shapes[causal], flash_visible_pairs(s, s, causal=causal, window=(-1, -1))
        run(shape, "gluon", lambda: L.forward(q, k, v, scale=scale, causal=causal, window=(-1, -1)), pairs)
        for label, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
            def f(backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            run(shape, label, f, pairs)
        run(shape, "fa3_tl", lambda: TL.forward(q, k, v, scale=scale, causal=causal, window=(-1, -1), softcap=0.0,
                                                use_tma=True, hopper_tiles=True), pairs)
        if flex is not None:
            run(shape, "flex", lambda: flex(qt, kt, vt, block_mask=masks.get(causal)), pairs)
    pairs = flash_visible_pairs(s, s, causal=True, window=win)
    run(sw_shape, "gluon", lambda: L.forward(q, k, v, scale=scale, causal=True, window=win), pairs)
    run(sw_shape, "fa3_tl", lambda: TL.forward(q, k, v, scale=scale, causal=True, window=win, softcap=0.0,
                                               use_tma=True, hopper_tiles=True), pairs)
    if flex is not None:
        run(sw_shape, "flex", lambda: flex(qt, kt, vt, block_mask=masks["sw"]), pairs)
    # ablations: one change each against the base config; only variants the check phase found correct (a variant
    # that hung or was wrong there is not launched again)
    checked = {}
    if (OUT / "part_check.json").exists():
        checked = {r["case"]: r.get("ok", False) for r in json.loads((OUT / "part_check.json").read_text())}

    def verified(label, causal):
        return checked.get("ablation " + label + " causal", False)

    for causal in (True, False):
        shape, pairs = shapes[causal], flash_visible_pairs(s, s, causal=causal, window=(-1, -1))
        for label, cfg in ablation_variants(causal)[1:]:
            if not verified(label, causal):
                rows.append({"shape": shape, "impl": f"gluon:{label}", "error": "skipped: not verified in check"})
                continue
            run(shape, f"gluon:{label}",
                lambda cfg=cfg: L.forward(q, k, v, scale=scale, causal=causal, window=(-1, -1), cfg=cfg), pairs)
    pairs = flash_visible_pairs(s, s, causal=True, window=win)
    for label, cfg in ablation_variants(True, window=True)[1:3]:
        if verified(label, True):
            run(sw_shape, f"gluon:{label}", lambda cfg=cfg: L.forward(q, k, v, scale=scale, causal=True, window=win,
                                                                      cfg=cfg), pairs)
    try:  # the Gluon result at this shape against the tl kernel (the float64 checks ran on smaller shapes)
        a = L.forward(q, k, v, scale=scale, causal=True, window=win)[0]
        b_ = TL.forward(q, k, v, scale=scale, causal=True, window=win, softcap=0.0)[0]
        rows.append({"shape": sw_shape, "impl": "gluon vs fa3_tl max abs diff", "value": float((a - b_).abs().max())})
    except Exception as e:
        rows.append({"shape": sw_shape, "impl": "gluon vs fa3_tl max abs diff", "error": err_text(e)})
    part.write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------------------------------------ main
def child(phase: str, timeout: int) -> dict:
    part = OUT / f"part_{phase}.json"
    part.unlink(missing_ok=True)
    t = time.time()
    try:
        p = subprocess.run([sys.executable, __file__, "--phase", phase, "--budget", str(timeout - 30)],
                           timeout=timeout, env={**os.environ, "OUT": str(OUT)})
        status = "ok" if p.returncode == 0 else f"exit {p.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout}s (a hang: see the last lines of the log)"
    rows = json.loads(part.read_text()) if part.exists() else []
    log(f"phase {phase}: {status} in {time.time() - t:.0f}s")
    return {"status": status, "rows": rows}


def summary(results: dict) -> str:
    lines = []
    comp = results.get("compile", [])
    bad = [r["config"] for r in comp if not r.get("ok") or not r.get("hopper_ok")]
    lines.append(f"compile: {len(comp) - len(bad)}/{len(comp)} configs ok for sm_90a" +
                 (f" (failed or spilled: {', '.join(bad)})" if bad else ""))
    chk = results.get("check", {})
    if chk:
        rows = chk.get("rows", [])
        wrong = [r["case"] for r in rows if not r.get("ok")]
        lines.append(f"check [{chk['status']}]: {len(rows) - len(wrong)}/{len(rows)} ok" +
                     (f"; WRONG: {', '.join(wrong)}" if wrong else ""))
    bench = results.get("bench", {})
    if bench:
        rows = [r for r in bench.get("rows", []) if "ms" in r]
        lines.append(f"bench [{bench['status']}]")
        lines.append(f"{'shape':24s} {'impl':30s} {'ms':>8s} {'TFLOP/s':>8s} {'vs cuDNN':>8s}")
        cudnn = {r["shape"]: r["ms"] for r in rows if r["impl"] == "sdpa_cudnn"}
        for r in rows:
            ratio = f"{cudnn[r['shape']] / r['ms']:.3f}" if r["shape"] in cudnn else "-"
            lines.append(f"{r['shape']:24s} {r['impl']:30s} {r['ms']:8.3f} {r['tflops']:8.0f} {ratio:>8s}")
        for r in bench.get("rows", []):
            if "error" in r:
                lines.append(f"{r['shape']:24s} {r['impl']:30s} ERROR {r['error'][:80]}")
        targets = []
        for shape in ("s16k d128 full", "s16k d128 causal"):
            g = next((r for r in rows if r["shape"] == shape and r["impl"] == "gluon"), None)
            if g and shape in cudnn:
                x = cudnn[shape] / g["ms"]
                targets.append(f"{shape}: {x:.3f}x cuDNN (target 1.05) {'MET' if x >= 1.05 else 'missed'}")
        sw = next((r for r in rows if r["shape"] == "s16k d128 SW4096 causal" and r["impl"] == "gluon"), None)
        if sw:
            targets.append(f"SW4096: {sw['ms']:.3f} ms (target 0.9) {'MET' if sw['ms'] <= 0.9 else 'missed'}")
        lines += ["targets: " + "; ".join(targets)] if targets else []
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="compile every config for sm_90a; launch nothing")
    ap.add_argument("--phase", choices=("check", "bench"), help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=150.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.phase == "check":
        return phase_check(OUT / "part_check.json")
    if args.phase == "bench":
        return phase_bench(OUT / "part_bench.json", args.budget)
    LOG.write_text("")
    import triton
    results = {"triton": triton.__version__, "torch": torch.__version__, "dry_run": args.dry_run,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if torch.cuda.is_available():
        results["device"] = torch.cuda.get_device_name()
        results["capability"] = list(torch.cuda.get_device_capability())
    log(f"triton {triton.__version__}, torch {torch.__version__}, device {results.get('device', 'none')}")
    compile_all(results)
    if not args.dry_run:
        if results.get("capability", [0])[0] != 9:
            results["skipped"] = "not an sm90 GPU: check and bench need Hopper"
            log(results["skipped"])
        else:
            results["check"] = child("check", 120)
            results["bench"] = child("bench", 150)
    results["wall_s"] = round(time.time() - T0, 1)
    (OUT / "gpu_gluon.json").write_text(json.dumps(results, indent=1))
    text = summary(results)
    with open(LOG, "a") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
