#!/usr/bin/env python3
"""Tile sweep of the forward kernel on one GPU: the data behind aot/tiles.toml (autotuning once, committed).

    python kernel_repos/flash-attn2/benchmarks/tile_sweep.py --out $OUT [--budget-s 200]

Runs the Triton source of ``attn_fwd_kernel`` (JIT, on this GPU) with each candidate tile config and the flags the
precompiled cubins are built with (both window edges on, an unbounded edge passed as a wide window), so a config's
time here is the time of the cubin the build would make from it. Shapes are the ones a model sees: prefill
(1k-16k tokens, GQA 32/8) and decode (one query row over a 1k-4k cache). torch SDPA is timed on the same inputs
in the same run as the anchor. Each result is checked against SDPA before it is timed (a config that computes a
wrong answer is reported, never picked). Writes ``tile_sweep.json`` and prints the best config per
(family, phase) next to the current tiles.toml entry.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PKG = HERE.parent / "torch-ext"
sys.path.insert(0, str(PKG))

from flash_attn2 import _triton_fwd as fwd  # noqa: E402  (the Triton source; imports triton)

try:
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None

PREFILL = [(1, 1024, 32, 8), (1, 4096, 32, 8), (1, 16384, 32, 8), (4, 2048, 32, 8)]  # (batch, seqlen, hq, hk)
DECODE = [(1, 1024, 32, 8), (16, 1024, 32, 8), (16, 4096, 32, 8)]  # (batch, context, hq, hk)
HEAD_DIMS = {"small": 64, "mid": 128, "big": 256}


def candidates(phase: str, fam: str):
    if phase == "decode":
        ms, ns, ws, ss = (16, 32, 64), (64, 128), (4,), (2, 3, 4)
    else:
        ms, ns, ws, ss = (64, 128), (32, 64, 128), (4, 8), (2, 3, 4)
    for m, n, w, s in itertools.product(ms, ns, ws, ss):
        if fam == "big" and (m * n > 128 * 64 or s > 2):
            continue
        yield {"block_m": m, "block_n": n, "num_warps": w, "num_stages": s}


def events_us(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(3):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / reps)
    return min(times)


def launch(cfg, q, k, v, out, lse, causal: bool):
    """One forward call with ``cfg``'s tiles: dense layout, the AOT flags (both window edges compiled in)."""
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    wide = sq + sk + 1
    grid = (triton_cdiv(sq, cfg["block_m"]), b * hq)
    dummy = lse
    fwd.attn_fwd_kernel[grid](
        q, k, v, out, lse, dummy, dummy, dummy, dummy,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), 0, 0, 0,
        sq, sk, hq, hq // hk, b, d ** -0.5 * fwd.LOG2E, 0.0, wide, 0 if causal else wide, 0, 1,
        VARLEN=False, SEQUSED=False, PAGED=False, PAGE=0, HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=False,
        USE_TMA=False, HEAD_DIM=d, HEAD_DIM_P=max(16, 1 << (d - 1).bit_length()),
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def triton_cdiv(a, b):
    return (a + b - 1) // b


def sdpa(q, k, v, causal):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                            is_causal=causal, enable_gqa=True).transpose(1, 2)


def flops(b, sq, sk, hq, d, causal) -> float:
    pairs = sq * sk - (sq * (sq - 1) // 2 if causal and sq == sk else 0)
    return 4.0 * b * hq * d * pairs


def sweep(args) -> dict:
    dev = torch.device("cuda")
    cap = ".".join(map(str, torch.cuda.get_device_capability()))
    arch = {"9.0": "9.0", "10.0": "10.0"}.get(cap, "8.0")
    current = {}
    tiles = HERE.parent / "aot" / "tiles.toml"
    if tomllib and tiles.is_file():
        current = tomllib.loads(tiles.read_text()).get("fwd", {}).get(arch, {})
    t_start = time.monotonic()
    rows = []
    fams = args.families.split(",")
    for phase, shapes in (("prefill", PREFILL), ("decode", DECODE)):
        for fam in fams:
            d = HEAD_DIMS[fam]
            for b, s, hq, hk in shapes:
                if time.monotonic() - t_start > args.budget_s:
                    print(f"budget of {args.budget_s:.0f} s used: stopping", flush=True)
                    return {"arch": arch, "current": current, "rows": rows, "complete": False}
                sq, sk = (1, s) if phase == "decode" else (s, s)
                causal = True
                torch.manual_seed(0)
                q = torch.randn(b, sq, hq, d, device=dev, dtype=torch.bfloat16)
                k = torch.randn(b, sk, hk, d, device=dev, dtype=torch.bfloat16)
                v = torch.randn_like(k)
                ref = sdpa(q, k, v, causal)
                reps = max(3, min(50, int(2e11 / flops(b, sq, sk, hq, d, causal)) + 1))
                t_sdpa = events_us(lambda: sdpa(q, k, v, causal), reps)
                shape = {"phase": phase, "family": fam, "batch": b, "sq": sq, "sk": sk, "hq": hq, "hk": hk, "d": d,
                         "causal": causal, "sdpa_us": round(t_sdpa, 2)}
                best = None
                for cfg in candidates(phase, fam):
                    out = torch.empty_like(q)
                    lse = torch.empty((b, hq, sq), device=dev, dtype=torch.float32)
                    try:
                        launch(cfg, q, k, v, out, lse, causal)
                        torch.cuda.synchronize()
                    except Exception as e:  # out of shared memory / registers for this arch
                        rows.append({**shape, **cfg, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                        continue
                    err = (out.float() - ref.float()).abs().max().item()
                    if not math.isfinite(err) or err > 0.05:
                        rows.append({**shape, **cfg, "error": f"wrong result (max abs diff {err})"})
                        continue
                    t = events_us(lambda: launch(cfg, q, k, v, out, lse, causal), reps)
                    row = {**shape, **cfg, "us": round(t, 2), "vs_sdpa": round(t_sdpa / t, 3), "max_abs_diff": err}
                    rows.append(row)
                    if best is None or t < best["us"]:
                        best = row
                if best:
                    print(f"{phase:7s} {fam:5s} B{b} q{sq} k{sk} {hq}/{hk}x{d}: sdpa {t_sdpa:8.1f} us, best "
                          f"{best['us']:8.1f} us ({best['vs_sdpa']:.2f}x) m{best['block_m']} n{best['block_n']} "
                          f"w{best['num_warps']} s{best['num_stages']}", flush=True)
    return {"arch": arch, "current": current, "rows": rows, "complete": True}


def summarise(result: dict) -> dict:
    """Per (phase, family): the config with the best geometric-mean speed over the shapes, and the current one."""
    out = {}
    groups = {}
    for r in result["rows"]:
        if "us" in r:
            groups.setdefault((r["phase"], r["family"]), []).append(r)
    for (phase, fam), rows in groups.items():
        shapes = {(r["batch"], r["sq"], r["sk"]) for r in rows}
        by_cfg = {}
        for r in rows:
            by_cfg.setdefault((r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]), []).append(r["vs_sdpa"])
        full = {c: math.exp(sum(map(math.log, v)) / len(v)) for c, v in by_cfg.items() if len(v) == len(shapes)}
        if not full:
            continue
        c = max(full, key=full.get)
        cur = result["current"].get(fam, {})
        cur_key = (cur.get("block_m"), cur.get("block_n"), cur.get("num_warps"), cur.get("num_stages"))
        out[f"{phase}/{fam}"] = {"best": dict(zip(("block_m", "block_n", "num_warps", "num_stages"), c)),
                                 "best_geomean_vs_sdpa": round(full[c], 3),
                                 "current": cur, "current_geomean_vs_sdpa": round(full.get(cur_key, 0.0), 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "tile_sweep_out")))
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop starting new shapes after this")
    ap.add_argument("--families", default="small,mid", help="comma list of small (d64), mid (d128), big (d256)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: tile_sweep needs a CUDA GPU (it times the Triton kernel there)", file=sys.stderr)
        return 2
    import triton
    result = sweep(args)
    result.update(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  summary=summarise(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tile_sweep.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
