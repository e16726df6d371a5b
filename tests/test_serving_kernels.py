"""transformers serving paths through our Python/Triton kernel repos, on CPU with tiny random-weight models:

- the paged adapter outside continuous batching (sdpa, named) and its block tables (continuous batching itself:
  tests/test_continuous_batching.py);
- a Mistral config with ``sliding_window`` smaller than the sequence runs through the sliding-window kernel with
  greedy output equal to sdpa's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from noarch_variant import build_noarch
from tiny_kernels import count_module_calls

ROOT = Path(__file__).resolve().parent.parent
PAGED_REPO = "kernels-community/paged-attention"
SLIDING_REPO = "kernels-community/sliding-window"


@pytest.fixture(scope="module")
def published_serving_kernels(local_hub, session_env_trust, tmp_path_factory):
    from kernel_loader.publish import publish_local

    for repo, src in ((PAGED_REPO, "paged-attention"), (SLIDING_REPO, "sliding-window")):
        out = tmp_path_factory.mktemp(src)
        build_noarch(ROOT / "kernel_repos" / src, out, "cpu")
        publish_local(out, repo, local_hub.root, 1)
    return PAGED_REPO, SLIDING_REPO


@pytest.fixture
def hooked(published_serving_kernels):
    from kernel_loader import api
    from kernel_loader.integrations import transformers as transformers_hook

    api.clear_cache()
    transformers_hook.enable(strict=True)
    yield
    transformers_hook.disable()
    api.clear_cache()


def _greedy_batch(model, prompts, attn, max_new_tokens=12):
    from transformers import ContinuousBatchingConfig, GenerationConfig

    model.set_attn_implementation(attn)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cb = ContinuousBatchingConfig(block_size=16, num_blocks=64, max_batch_tokens=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = model.generate_batch(inputs=prompts, generation_config=gen, continuous_batching_config=cb,
                                   progress_bar=False)
    return {i: out[k].generated_tokens for i, k in enumerate(sorted(out, key=lambda r: int(r.split("_")[-1])))}


def test_paged_adapter_outside_continuous_batching_uses_sdpa_with_a_warning(hooked):
    from kernel_loader import api as kernel_loader

    loaded = kernel_loader.load(f"paged|{PAGED_REPO}")
    assert loaded.ok and loaded.mask_format == "sdpa"
    q = torch.randn(1, 4, 6, 32)
    k = torch.randn(1, 2, 6, 32)

    class M(torch.nn.Module):
        is_causal = True
        num_key_value_groups = 2
        layer_idx = 0

    with pytest.warns(UserWarning, match="no paged cache"):
        out, _ = loaded.attention(M(), q, k, k, None, scaling=0.2)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, scale=0.2, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_block_tables_from_slots():
    from kernel_loader.adapters import block_tables_from_slots

    page = 4
    # seq 0: pages 7, 2 (6 tokens); seq 1: page 5 (3 tokens)
    slots = torch.tensor([28, 29, 30, 31, 8, 9, 20, 21, 22])
    cu = torch.tensor([0, 6, 9])
    tables, lens = block_tables_from_slots(slots, cu, page)
    assert tables.tolist() == [[7, 2], [5, 0]] and lens.tolist() == [6, 3]
    assert block_tables_from_slots(torch.tensor([28, 30, 29, 31, 8, 9, 20, 21, 22]), cu, page) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mistral_sliding_window_greedy_equals_sdpa(hooked, dtype):
    from kernel_loader import api as kernel_loader
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=160, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=8,
                        max_position_embeddings=512)
    model = MistralForCausalLM(cfg).eval().to(dtype)
    ids = torch.randint(1, 160, (1, 20))
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=16, do_sample=False)
        ref_logits = model(ids).logits
    loaded = kernel_loader.load(SLIDING_REPO)
    assert loaded.ok and loaded.variant == "torch-cpu"
    counts = count_module_calls(loaded.module._torch_impl, ["prefill"])  # the kernel's CPU path itself
    model.set_attn_implementation(SLIDING_REPO)
    with torch.no_grad():
        ours = model.generate(ids, max_new_tokens=16, do_sample=False)
        logits = model(ids).logits
    assert counts["prefill"] >= 2 * 16
    assert torch.equal(ours, ref)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(logits, ref_logits, atol=tol, rtol=tol)
    # the window matters here: full causal attention gives different logits
    model.config.sliding_window = None
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        full = model(ids).logits
    assert (full - ref_logits).abs().max() > 10 * tol


def test_registering_a_paged_name_also_answers_the_stripped_name(hooked):
    from transformers import AttentionInterface

    from kernel_loader.integrations import transformers as integration

    loaded = integration.load_and_register(f"paged|{PAGED_REPO}")
    assert AttentionInterface._global_mapping[f"paged|{PAGED_REPO}"] is loaded.attention
    assert AttentionInterface._global_mapping[PAGED_REPO] is loaded.attention
    assert AttentionInterface().get_interface(f"paged|{PAGED_REPO}", None) is loaded.attention
