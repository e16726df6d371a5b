"""User side of the demo: what a transformers or plain-torch user writes. Needs HF_ENDPOINT set (scripts/demo)."""

from __future__ import annotations

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


def prefill_tokens_per_s(model, ids, repeats=3) -> float:
    with torch.inference_mode():
        model(ids)  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            model(ids)
    return repeats * ids.numel() / (time.perf_counter() - t)


def main() -> None:
    from transformers import AutoModelForCausalLM

    system = detect()
    print(f"machine: {system.variant}; torch {system.torch_full_version}; cpu features {', '.join(system.cpu_features)}")
    res = resolve(parse_spec(REPO), system)
    print(f"resolve {REPO}: {res.revision} @ {res.commit[:12]} -> {res.variant}")
    for d in res.trace:
        print(f"   {'accepted' if d.accepted else 'rejected'} {d.variant}{': ' + d.reason if d.reason else ''}")

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

        long = torch.randint(0, 1000, (1, 2048))
        for dtype in (torch.bfloat16,):
            ours.to(dtype), ref.to(dtype)
            tk, ts = prefill_tokens_per_s(ours, long), prefill_tokens_per_s(ref, long)
            print(f"prefill 2048 tokens {str(dtype)[6:]}: ours {tk:,.0f} tok/s, sdpa {ts:,.0f} tok/s, ratio {tk / ts:.2f}x")

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
    main()
