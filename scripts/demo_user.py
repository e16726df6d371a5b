"""User side of the demo: what a transformers or plain-torch user writes. Needs HF_ENDPOINT set (scripts/demo).

``--offline`` (run by scripts/demo with the Hub stopped and HF_HUB_OFFLINE=1): the model loads the kernel from the
cache the online run filled, and its greedy tokens match sdpa's.

Speed is printed only from the paired method (kernel_loader.bench: the two implementations alternate round by
round in this process; the figure is the median of the per-round ratios, with their min-max), so two runs in a row
agree; scripts/bench_model.py is the full benchmark.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

import kernel_loader
from kernel_loader.resolve import resolve
from kernel_loader.spec import parse_spec
from kernel_loader.system import detect

REPO = "kernels-community/flash-attn2"


def tiny_llama(path: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    LlamaForCausalLM(cfg).save_pretrained(path)


def paired_prefill(model, spec: str, tokens: int, dtype) -> str:
    """One line from the alternated A/B method: median per-round ratio (min-max) and both medians."""
    from kernel_loader import bench

    model.to(dtype)
    impls = [bench.Impl("sdpa"), bench.Impl(spec, label="ours")]
    r = bench.prefill(model, impls, tokens, rounds=7, device="cpu", min_run_s=0.15)
    ours, ref, ratio = r["ours"]["tokens_per_s"], r["sdpa"]["tokens_per_s"], r["ours"]["ratio_vs_sdpa"]
    routed = r["check"]["ours"]["kernel_calls"] == 0
    return (f"prefill {tokens} tokens {str(dtype)[6:]}: ours {ours['median']:,.0f} tok/s, sdpa {ref['median']:,.0f} "
            f"tok/s, ratio {ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}] over {r['rounds']} "
            f"alternated rounds" + (" (routed to sdpa on purpose here: kernel-loader doctor)" if routed else
                                    f" ({r['check']['ours']['kernel_calls']} kernel calls per forward)"))


def offline_main() -> None:
    """The Hub is stopped and HF_HUB_OFFLINE=1: everything must come from the cache."""
    from transformers import AutoModelForCausalLM

    assert os.environ.get("HF_HUB_OFFLINE") == "1", "run with HF_HUB_OFFLINE=1 (scripts/demo does)"
    kernel_loader.enable()
    with tempfile.TemporaryDirectory() as path:
        tiny_llama(path)
        t = time.perf_counter()
        ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation=REPO, dtype=torch.float32).eval()
        loaded = kernel_loader.load(REPO)
        print(f"from_pretrained(attn_implementation={REPO!r}) offline in {time.perf_counter() - t:.1f}s: "
              f"variant {loaded.variant}, commit {loaded.commit[:12] if loaded.commit else None}, "
              f"fallback {loaded.fallback!r}")
        assert loaded.ok, loaded.fallback
        ref = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
        ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            g1 = ours.generate(ids, max_new_tokens=24, do_sample=False)
            g2 = ref.generate(ids, max_new_tokens=24, do_sample=False)
        print(f"greedy generation of 24 tokens identical to sdpa (offline): {bool(torch.equal(g1, g2))}")
        assert torch.equal(g1, g2)


def main() -> None:
    from transformers import AutoModelForCausalLM

    system = detect()
    print(f"machine: {system.variant}; torch {system.torch_full_version}; cpu features {', '.join(system.cpu_features)}")
    res = resolve(parse_spec(REPO), system)
    print(f"resolve {REPO}: {res.revision} @ {res.commit[:12]} -> {res.variant}")
    for d in res.trace:
        print(f"   {'accepted' if d.accepted else 'rejected'} {d.variant}{': ' + d.reason if d.reason else ''}")
    from kernel_loader.adapters import routing

    for line in routing.describe():
        print(f"   routed to sdpa on purpose: {line}")

    kernel_loader.enable()
    with tempfile.TemporaryDirectory() as path:
        tiny_llama(path)
        t = time.perf_counter()
        ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation=REPO, dtype=torch.float32).eval()
        print(f"\nfrom_pretrained(attn_implementation={REPO!r}) in {time.perf_counter() - t:.1f}s "
              f"(download + verify + import); model uses {ours.config._attn_implementation!r}")
        loaded = kernel_loader.load(REPO)
        print(f"kernel: {loaded.variant}, commit {loaded.commit[:12]}, files verified at {loaded.path}")
        ref = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()

        torch.manual_seed(1)
        ids = torch.randint(0, 1000, (3, 96))
        mask = torch.ones_like(ids)
        mask[1, :20] = 0  # left padding
        mask[2, :57] = 0
        with torch.inference_mode():
            a = ours(ids, attention_mask=mask).logits
            b = ref(ids, attention_mask=mask).logits
        real = mask.bool()
        err = (a - b)[real].abs().max().item()
        print(f"\nlogits vs sdpa (fp32, batch 3 with left padding): max |diff| = {err:.2e}")
        assert err < 1e-3, err
        with torch.inference_mode():
            g1 = ours.generate(ids[:1, :16], max_new_tokens=24, do_sample=False)
            g2 = ref.generate(ids[:1, :16], max_new_tokens=24, do_sample=False)
        print(f"greedy generation of 24 tokens identical to sdpa: {bool(torch.equal(g1, g2))}")

        # one torch thread: on a shared machine two OpenMP threads spin against other jobs and the figures scatter
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        print("\nspeed, paired A/B in this process, 1 thread (scripts/bench_model.py has the full benchmark):")
        for dtype in (torch.float32, torch.bfloat16):
            print("   " + paired_prefill(ours, REPO, 1024, dtype), flush=True)
        torch.set_num_threads(threads)

    print("\nplain torch: sdpa_like drop-in in a bidirectional encoder block")
    attn = kernel_loader.sdpa_like(REPO)
    q, k, v = (torch.randn(2, 8, 128, 64) for _ in range(3))
    err = (attn(q, k, v) - F.scaled_dot_product_attention(q, k, v)).abs().max().item()
    print(f"   max |diff| vs F.scaled_dot_product_attention: {err:.2e}")

    print("\nfallback: a kernel that does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        missing = kernel_loader.load("kernels-community/not-published")
    print(f"   warning: {caught[0].message if caught else '(none)'}")
    print(f"   LoadedKernel.fallback = {missing.fallback!r}")
    out = missing.sdpa(q, k, v)
    print(f"   attention still runs: output {tuple(out.shape)}")


if __name__ == "__main__":
    offline_main() if "--offline" in sys.argv[1:] else main()
