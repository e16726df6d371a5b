"""Load the stable-ABI CUDA variant built on the CPU machine (torch 2.14.1 cu130 headers, TORCH_TARGET_VERSION 2.10)
on a GPU machine's torch (2.11 here) through kernel_loader.importer.import_variant, check its ``ops.fwd`` against a
float64 reference and SDPA on fresh random inputs, check bad inputs raise clear errors, time it, and show that the
exact-torch variant (torch214-...) is rejected by variant resolution with the right reason.

    python gpu_check_stable_abi.py BUILD_DIR OUT_JSON   # BUILD_DIR holds build/<variant>/ folders
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

STABLE = "torch-stable-abi210-cu130-x86_64-linux"
EXACT = "torch214-cxx11-cu130-x86_64-linux"


def reference(q, k, v, scale, causal, wl, wr, softcap):
    """float64 attention in the flash_attn layout (B, S, H, D); bottom-right aligned masks; rows that see no key
    give out 0 and lse -inf (the kernels' convention)."""
    q, k, v = (t.double() for t in (q, k, v))
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hk, dim=2)
    v = v.repeat_interleave(Hq // Hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(Sq, device=q.device)[:, None]
    j = torch.arange(Sk, device=q.device)[None, :]
    diag = i + Sk - Sq
    wr = 0 if causal else wr
    mask = torch.zeros(Sq, Sk, dtype=torch.bool, device=q.device)
    if wl >= 0:
        mask |= j < diag - wl
    if wr >= 0:
        mask |= j > diag + wr
    s = s.masked_fill(mask, -math.inf)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Sq)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return out, lse


def check_case(ops, dtype, B, Sq, Sk, Hq, Hk, D, causal, wl, wr, softcap, layout="contiguous"):
    g = torch.Generator(device="cuda").manual_seed(hash((B, Sq, Sk, Hq, Hk, D, causal, wl, wr)) % 2**31)
    def make(S, H):
        if layout == "bhsd":  # (B, H, S, D) storage viewed as (B, S, H, D): non-standard strides
            return torch.randn(B, H, S, D, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
        if layout == "misaligned":  # storage offset 1: 16-byte loads impossible, scalar path
            n = B * S * H * D
            return torch.randn(n + 1, device="cuda", dtype=dtype, generator=g)[1:].view(B, S, H, D)
        return torch.randn(B, S, H, D, device="cuda", dtype=dtype, generator=g)
    q, k, v = make(Sq, Hq), make(Sk, Hk), make(Sk, Hk)
    scale = 1.0 / math.sqrt(D)
    out, lse = ops.fwd(q, k, v, scale, causal, wl, wr, softcap, True)
    torch.cuda.synchronize()
    ref_out, ref_lse = reference(q, k, v, scale, causal, wl, wr, softcap)
    err = (out.double() - ref_out).abs().max().item()
    finite = torch.isfinite(ref_lse)
    lse_err = (lse.double()[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
    lse_inf_ok = bool((lse[~finite] == -math.inf).all().item()) and bool((out.transpose(1, 2)[~finite] == 0).all())
    # The reference rounded to the dtype: the error a perfect kernel would have, to set a tolerance from.
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    sdpa_err = None
    if wl < 0 and wr < 0 and softcap == 0 and (not causal or Sq == Sk):
        sd = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=scale,
            enable_gqa=Hq != Hk).transpose(1, 2)
        sdpa_err = (out.float() - sd.float()).abs().max().item()
    ok = err <= tol and lse_err <= 1e-3 and lse_inf_ok and out.dtype == dtype and out.shape == q.shape
    return {"dtype": str(dtype).replace("torch.", ""), "B": B, "Sq": Sq, "Sk": Sk, "Hq": Hq, "Hk": Hk, "D": D,
            "causal": causal, "window": [wl, wr], "softcap": softcap, "layout": layout,
            "max_abs_err_vs_fp64": err, "max_lse_err": lse_err, "empty_rows_ok": lse_inf_ok,
            "max_abs_err_vs_sdpa": sdpa_err, "tol": tol, "ok": ok}


def bad_inputs(ops):
    out = []
    x = lambda *s, dt=torch.bfloat16, dev="cuda": torch.randn(*s, device=dev, dtype=dt)
    cases = {
        "float32": lambda: ops.fwd(x(1, 8, 2, 64, dt=torch.float32), x(1, 8, 2, 64, dt=torch.float32),
                                   x(1, 8, 2, 64, dt=torch.float32), 0.1, False, -1, -1, 0.0, False),
        "head_dim_12": lambda: ops.fwd(x(1, 8, 2, 12), x(1, 8, 2, 12), x(1, 8, 2, 12), 0.1, False, -1, -1, 0.0, False),
        "head_dim_264": lambda: ops.fwd(x(1, 8, 2, 264), x(1, 8, 2, 264), x(1, 8, 2, 264), 0.1, False, -1, -1, 0.0, False),
        "gqa_3_of_2": lambda: ops.fwd(x(1, 8, 3, 64), x(1, 8, 2, 64), x(1, 8, 2, 64), 0.1, False, -1, -1, 0.0, False),
        "k_v_shape": lambda: ops.fwd(x(1, 8, 2, 64), x(1, 8, 2, 64), x(1, 9, 2, 64), 0.1, False, -1, -1, 0.0, False),
        "mixed_dtype": lambda: ops.fwd(x(1, 8, 2, 64), x(1, 8, 2, 64, dt=torch.float16), x(1, 8, 2, 64), 0.1, False,
                                       -1, -1, 0.0, False),
        "3d_input": lambda: ops.fwd(x(8, 2, 64), x(8, 2, 64), x(8, 2, 64), 0.1, False, -1, -1, 0.0, False),
        "head_dim_strided": lambda: ops.fwd(x(1, 8, 2, 128)[..., ::2], x(1, 8, 2, 64), x(1, 8, 2, 64), 0.1, False,
                                            -1, -1, 0.0, False),
        "negative_softcap": lambda: ops.fwd(x(1, 8, 2, 64), x(1, 8, 2, 64), x(1, 8, 2, 64), 0.1, False, -1, -1,
                                            -1.0, False),
        "cpu_tensors": lambda: ops.fwd(x(1, 8, 2, 64, dev="cpu"), x(1, 8, 2, 64, dev="cpu"), x(1, 8, 2, 64, dev="cpu"),
                                       0.1, False, -1, -1, 0.0, False),
    }
    for name, fn in cases.items():
        try:
            fn()
            torch.cuda.synchronize()
            out.append({"case": name, "raised": None, "ok": False})
        except Exception as e:  # noqa: BLE001 - recording what each bad input raises
            out.append({"case": name, "raised": type(e).__name__, "message": str(e).splitlines()[0][:300], "ok": True})
    torch.cuda.synchronize()  # the device is still healthy after all of them
    return out


def bench(ops, B, S, H, D, causal, dtype=torch.bfloat16, iters=10):
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=dtype) for _ in range(3))
    scale = 1 / math.sqrt(D)

    def timed(fn):
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[len(times) // 2]

    ms = timed(lambda: ops.fwd(q, k, v, scale, causal, -1, -1, 0.0, False))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    sdpa_ms = timed(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
    flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
    return {"B": B, "S": S, "H": H, "D": D, "causal": causal, "dtype": "bfloat16", "ms": ms,
            "tflops": flops / ms / 1e9, "sdpa_ms": sdpa_ms, "sdpa_tflops": flops / sdpa_ms / 1e9,
            "ratio_vs_sdpa": sdpa_ms / ms}


_LOAD_EXACT = """
import sys, torch
try:
    torch.ops.load_library(sys.argv[1]); print("loaded")
except Exception as e:
    print("failed:", str(e.__cause__ or e).splitlines()[0][:300])
"""


def main(build_dir: Path, out_json: Path) -> int:
    from kernel_loader.importer import import_variant

    res: dict = {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "variant": STABLE,
        "built_against": json.loads((build_dir / STABLE / "build-info.json").read_text())["torch"],
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        res["driver"] = smi
    except OSError:
        pass

    # Variant resolution as the stock client does it, over both CUDA variants.
    archs = json.loads((build_dir / STABLE / "metadata.json").read_text())["backend"]["archs"]
    res["archs"] = archs
    try:
        from kernels.archs import _supports_cuda_capability
        from kernels.variants import VariantRejected, get_variants_local, resolve_variants

        chosen, trace = resolve_variants(get_variants_local(build_dir))
        res["resolution"] = {
            "chosen": chosen[0].variant_str if chosen else None,
            "rejected": {d.variant.variant_str: d.reason for d in trace if isinstance(d, VariantRejected)},
        }
        res["arch_check_passes"] = bool(_supports_cuda_capability(archs, torch.cuda.get_device_capability(0)))
    except Exception as e:  # noqa: BLE001
        res["resolution_error"] = f"{type(e).__name__}: {str(e)[:500]}"
    exact_lib = next((build_dir / EXACT).glob("*.abi3.so"), None)
    if exact_lib is not None:
        p = subprocess.run([sys.executable, "-c", _LOAD_EXACT, str(exact_lib)], capture_output=True, text=True)
        res["exact_variant_direct_load_on_this_torch"] = (p.stdout.strip() or p.stderr.strip()[-300:])

    t0 = time.perf_counter()
    try:
        mod = import_variant(build_dir / STABLE)
        ops = sys.modules[f"{mod.__name__}._ops"].ops
        res["module"] = mod.__name__
    except Exception as e:  # noqa: BLE001 - the package layer is another helper's; still test the library
        import importlib.util

        res["import_variant_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        spec = importlib.util.spec_from_file_location("_fa2_ops_only", build_dir / STABLE / "_ops.py")
        ops_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ops_mod)
        ops = ops_mod.ops
    res["import_seconds"] = time.perf_counter() - t0

    cases = []
    for dtype in (torch.bfloat16, torch.float16):
        for D in (32, 64, 72, 128, 256):
            cases.append(check_case(ops, dtype, 2, 130, 130, 4, 4, D, False, -1, -1, 0.0))
            cases.append(check_case(ops, dtype, 2, 130, 130, 4, 4, D, True, -1, -1, 0.0))
        cases.append(check_case(ops, dtype, 2, 77, 203, 8, 2, 128, True, -1, -1, 0.0))  # GQA, bottom-right
        cases.append(check_case(ops, dtype, 1, 256, 256, 8, 1, 64, False, -1, -1, 0.0))  # MQA, = SDPA
        cases.append(check_case(ops, dtype, 1, 300, 300, 4, 2, 128, True, 64, 0, 0.0))  # sliding window
        cases.append(check_case(ops, dtype, 1, 200, 333, 4, 4, 96, False, 40, 17, 0.0))  # two-sided window
        cases.append(check_case(ops, dtype, 1, 190, 190, 4, 4, 128, True, -1, -1, 30.0))  # softcap
        cases.append(check_case(ops, dtype, 1, 200, 70, 2, 2, 64, True, -1, -1, 0.0))  # Sq > Sk: empty rows
        cases.append(check_case(ops, dtype, 2, 129, 129, 4, 2, 64, True, -1, -1, 0.0, layout="bhsd"))
        cases.append(check_case(ops, dtype, 1, 100, 100, 2, 2, 40, False, -1, -1, 0.0, layout="misaligned"))
        cases.append(check_case(ops, dtype, 1, 1, 4096, 8, 2, 128, True, -1, -1, 0.0))  # decode-like
        cases.append(check_case(ops, dtype, 1, 2048, 2048, 2, 2, 128, True, -1, -1, 0.0))
    res["cases"] = cases
    res["cases_ok"] = sum(c["ok"] for c in cases)
    res["cases_total"] = len(cases)
    res["bad_inputs"] = bad_inputs(ops)
    res["bench"] = [bench(ops, 2, 4096, 16, 128, False), bench(ops, 2, 4096, 16, 128, True),
                    bench(ops, 2, 4096, 16, 64, True)]
    out_json.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("cases",)}, indent=2))
    bad = [c for c in cases if not c["ok"]]
    for c in bad:
        print("FAILED", c)
    return 0 if not bad and all(b["ok"] for b in res["bad_inputs"]) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
