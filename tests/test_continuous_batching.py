"""Continuous batching (``generate_batch``, transformers' paged cache) through our kernels, on whichever transformers is
first on sys.path (``scripts/test_transformers_matrix`` runs this file on 5.22.2, 5.23.0 and 5.24.0; their contracts
differ: see TRANSFORMERS.md). Greedy tokens must equal sdpa's, and the kernel must have run (its own op calls > 0):

- ``paged|kernels-community/paged-attention`` (the vLLM-style paged kernel, noarch build);
- ``kernels-community/flash-attn2`` (the compiled CPU flash kernel: the packed varlen path).

Prompts of lengths around the page size (16): partly filled last pages, several pages, a one-token prompt.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from noarch_variant import build_noarch  # noqa: E402
from tiny_kernels import count_module_calls, tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGED_REPO = "kernels-community/paged-attention"
PROMPT_LENGTHS = (5, 16, 37, 1, 23)


def _hook():
    from kernel_loader.integrations import transformers as hook

    return hook


@pytest.fixture(scope="module")
def paged_repo(local_hub, session_env_trust, tmp_path_factory):
    from kernel_loader.publish import publish_local

    out = tmp_path_factory.mktemp("paged-attention")
    build_noarch(ROOT / "kernel_repos" / "paged-attention", out, "cpu")
    publish_local(out, PAGED_REPO, local_hub.root, 1)
    return PAGED_REPO


@pytest.fixture
def hooked():
    from kernel_loader import api

    api.clear_cache()
    _hook().enable(strict=True)
    yield
    _hook().disable()
    api.clear_cache()


def _prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 160, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _greedy_batch(model, prompts, attn, max_new_tokens=12):
    from transformers import ContinuousBatchingConfig, GenerationConfig

    model.set_attn_implementation(attn)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cb = ContinuousBatchingConfig(block_size=16, num_blocks=64, max_batch_tokens=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = model.generate_batch(inputs=prompts, generation_config=gen, continuous_batching_config=cb,
                                   progress_bar=False)
    assert len(out) == len(prompts), f"{attn}: {len(out)} of {len(prompts)} requests finished"
    return {i: out[k].generated_tokens for i, k in enumerate(sorted(out, key=lambda r: int(r.split("_")[-1])))}


def test_paged_kernel_greedy_equals_sdpa(hooked, paged_repo):
    import kernel_loader

    model = tiny_llama()
    prompts = _prompts()
    ref = _greedy_batch(model, prompts, "sdpa")
    loaded = kernel_loader.load(PAGED_REPO)
    assert loaded.ok and loaded.variant == "torch-cpu", loaded.fallback
    counts = count_module_calls(loaded.module, ["reshape_and_cache_flash", "paged_attention_varlen"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = _greedy_batch(model, prompts, f"paged|{PAGED_REPO}")
    fallbacks = [str(w.message) for w in caught if str(w.message).startswith("kernel_loader:")
                 and "dirty git tree" not in str(w.message)]
    assert ours == ref, fallbacks
    assert not fallbacks, fallbacks
    # every layer of every forward attends through the kernel (prefill and decode steps)
    assert counts["paged_attention_varlen"] >= 2 * 12, counts


def test_flash_kernel_greedy_equals_sdpa(hooked, published_flash_attn2):
    import kernel_loader

    model = tiny_llama()
    prompts = _prompts()
    ref = _greedy_batch(model, prompts, "sdpa")
    loaded = kernel_loader.load(published_flash_attn2)
    assert loaded.ok and loaded.fallback is None, loaded.fallback
    counts = count_module_calls(loaded.module, ["flash_attn_varlen_func"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = _greedy_batch(model, prompts, published_flash_attn2)
    fallbacks = [str(w.message) for w in caught if str(w.message).startswith("kernel_loader:")
                 and "dirty git tree" not in str(w.message)]
    assert ours == ref, fallbacks
    assert not fallbacks, fallbacks
    assert counts["flash_attn_varlen_func"] >= 2 * 12, counts
