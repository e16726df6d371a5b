"""Times the CPU flash-attn2 forward against torch SDPA on CPU; prints a markdown table.

Usage: python benchmarks/bench_cpu.py [--repeat N] [--threads T] [--quick]
Builds the kernel from this repo's sources (tests/cpu_ext.py; cache: FLASH_ATTN2_TEST_CACHE or
~/.cache/flash_attn2_cpu_test). Ratio = SDPA time / ours (> 1: ours is faster).
"""

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import cpu_ext  # noqa: E402


@dataclass
class Case:
    b: int
    h: int
    s: int
    d: int
    dtype: torch.dtype
    causal: bool
    window: int = -1  # left window (ours: skipped blocks; SDPA: explicit mask)

    def label(self) -> str:
        kind = "causal" if self.causal else "full"
        if self.window >= 0:
            kind += f" W{self.window}"
        return f"B{self.b} H{self.h} S{self.s} D{self.d} {str(self.dtype).replace('torch.', '')} {kind}"

    def flops(self) -> float:
        # 4*b*h*sq*sk*d, scaled by the exact fraction of visible (query, key) pairs.
        i = torch.arange(self.s)[:, None]
        j = torch.arange(self.s)[None, :]
        vis = torch.ones(self.s, self.s, dtype=torch.bool)
        if self.causal:
            vis &= j <= i
        if self.window >= 0:
            vis &= j >= i - self.window
        return 4.0 * self.b * self.h * self.d * float(vis.sum())


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per case; the best is reported")
    ap.add_argument("--quick", action="store_true", help="small shapes only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("FLASH_ATTN2_TEST_CACHE", Path.home() / ".cache" / "flash_attn2_cpu_test"))
    fa = cpu_ext.load(cache)

    cases = [Case(1, 8, 1024, 64, torch.float32, False), Case(1, 8, 1024, 64, torch.float32, True)]
    if not args.quick:
        cases = [Case(1, 8, 4096, 128, torch.bfloat16, False), Case(1, 8, 4096, 128, torch.bfloat16, True),
                 Case(1, 8, 4096, 128, torch.bfloat16, True, window=512)] + cases
    print(f"CPU: {cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"kernel path (D=128): {fa.cpu_isa(128)} | load average {os.getloadavg()[0]:.1f}\n")
    print("| shape | ours ms | ours GFLOP/s | SDPA ms | SDPA/ours |")
    print("|---|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for c in cases:
        q, k, v = (torch.randn(c.b, c.s, c.h, c.d, generator=gen).to(c.dtype) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's (B, H, S, D) view
        mask = None
        if c.window >= 0:
            i, j = torch.arange(c.s)[:, None], torch.arange(c.s)[None, :]
            mask = (j <= i) & (j >= i - c.window)
        with torch.no_grad():
            ours = best_time(lambda: fa.flash_attn_func(q, k, v, causal=c.causal, window_size=(c.window, -1)),
                             args.repeat)
            if mask is None:
                sdpa = best_time(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=c.causal), args.repeat)
            else:
                sdpa = best_time(lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask), args.repeat)
        print(f"| {c.label()} | {ours * 1e3:.1f} | {c.flops() / ours / 1e9:.0f} | {sdpa * 1e3:.1f} | "
              f"{sdpa / ours:.2f} |", flush=True)


if __name__ == "__main__":
    main()
