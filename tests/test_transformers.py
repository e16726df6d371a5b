"""kernel_loader.enable() with real transformers: tiny local Llama models, random weights, no downloads.

The kernel-path tests need the fixture ``published_flash_attn2`` (repo id of the CPU flash-attn2 kernel published on
the local Hub, from conftest); they skip with that reason when it is not defined. Other transformers releases:
``scripts/test_transformers_matrix`` runs this file on each release of the tested window.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask, sdpa_mask  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from kernel_loader.integrations import transformers as hook  # noqa: E402

MISSING_SPEC = "kernels-test/no-such-kernel"  # org trusted in the tests below; repo absent from the Hub


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def flash_repo(request) -> str:
    try:
        return request.getfixturevalue("published_flash_attn2")
    except pytest.FixtureLookupError:
        pytest.skip("fixture 'published_flash_attn2' (real CPU flash-attn2 kernel on the local Hub) is not in conftest")


@pytest.fixture
def enabled():
    """The hook installed for one test, and removed (with its registrations) after it."""
    was = hook.is_enabled()
    hook.enable()
    yield hook
    if not was:
        hook.disable()


def tiny_config(**kw) -> LlamaConfig:
    # initializer_range 0.5 makes attention peaky, so a wrong mask or kernel shows in the logits.
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5, pad_token_id=0)
    base.update(kw)
    return LlamaConfig(**base)


@pytest.fixture
def saved_model(tmp_path) -> Path:
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config()).save_pretrained(tmp_path / "tiny-llama")
    return tmp_path / "tiny-llama"


def batch(left_pad: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    if left_pad:
        mask[1, :5] = 0
        mask[2, :2] = 0
        ids[mask == 0] = 0
    return ids, mask


TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=6e-2, rtol=3e-2)}


def kernel_ops(loaded, fn) -> set[str]:
    """Names of the kernel's own torch ops (namespace = the build id) that ``fn()`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    prefix = loaded.module.__name__ + "::"
    return {e.key[len(prefix):] for e in prof.key_averages() if e.key.startswith(prefix)}


def assert_logits_match(model, ref, dtype, left_pad):
    ids, mask = batch(left_pad)
    got = {}
    with torch.no_grad():
        ops = kernel_ops(loaded_for(model), lambda: got.setdefault("logits", model(ids, attention_mask=mask).logits))
        want = ref(ids, attention_mask=mask).logits.float()
    # The kernel itself ran (no per-call SDPA fallback); padding goes through its varlen entry point.
    assert ops, f"no op of {loaded_for(model).module.__name__} ran"
    assert any("varlen" in op for op in ops) == left_pad, ops
    keep = mask.bool()  # padded query rows are undefined (flash gives 0, sdpa a masked average)
    torch.testing.assert_close(got["logits"].float()[keep], want[keep], **TOL[dtype])


def assert_fallback_logits_match(model, ref):
    ids, mask = batch(left_pad=True)
    with torch.no_grad():
        got, want = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], **TOL[torch.float32])


def loaded_for(model):
    return hook.loaded_kernels()[model.config._attn_implementation]


class CallCounter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def assert_routed_to_kernel_loader(model, spec, monkeypatch):
    """config names the spec, the registered functions are ours, the kernel loaded, and forward calls it."""
    assert model.config._attn_implementation == spec
    loaded = hook.loaded_kernels()[spec]
    assert loaded.fallback is None, loaded.fallback
    assert loaded.variant and loaded.module is not None
    assert ALL_ATTENTION_FUNCTIONS[spec] is loaded.attention
    assert ALL_MASK_ATTENTION_FUNCTIONS[spec] is hook.mask_function(loaded.mask_format)
    counter = CallCounter(loaded.attention)
    monkeypatch.setitem(type(ALL_ATTENTION_FUNCTIONS)._global_mapping, spec, counter)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert counter.calls == model.config.num_hidden_layers


# ------------------------------------------------------------------ the hook itself (no loader needed)


def test_enable_is_idempotent_and_disable_restores(enabled):
    from transformers.integrations import hub_kernels

    original = enabled._state.original
    assert hub_kernels.load_and_register_attn_kernel is hook._load_and_register
    hook.enable()
    hook.enable()
    assert hub_kernels.load_and_register_attn_kernel is hook._load_and_register
    hook.disable()
    assert not hook.is_enabled()
    assert hub_kernels.load_and_register_attn_kernel is original
    hook.disable()  # no-op


def test_mask_function_names_valid_formats():
    assert hook.mask_function("flash") is flash_attention_mask
    assert hook.mask_function("sdpa") is sdpa_mask
    with pytest.raises(ValueError, match="'dense'.*flash, sdpa"):
        hook.mask_function("dense")


def test_non_kernel_strings_are_not_ours(enabled):
    from transformers.integrations import hub_kernels

    assert hub_kernels.load_and_register_attn_kernel("sdpa") is None
    assert hook.loaded_kernels() == {}


# ------------------------------------------------------------------ (a), (b): both entry points reach the kernel


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("left_pad", [False, True], ids=["dense", "left-pad"])
def test_from_pretrained_routes_through_kernel_loader(enabled, flash_repo, saved_model, monkeypatch, dtype, left_pad):
    model = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation=flash_repo, dtype=dtype).eval()
    ref = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa", dtype=dtype).eval()
    assert_logits_match(model, ref, dtype, left_pad)
    assert_routed_to_kernel_loader(model, flash_repo, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("left_pad", [False, True], ids=["dense", "left-pad"])
def test_set_attn_implementation_routes_through_kernel_loader(enabled, flash_repo, saved_model, monkeypatch,
                                                              left_pad):
    model = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa").eval()
    ref = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa").eval()
    model.set_attn_implementation(flash_repo)
    assert_logits_match(model, ref, torch.float32, left_pad)
    assert_routed_to_kernel_loader(model, flash_repo, monkeypatch)
    model.set_attn_implementation("sdpa")  # and back: transformers' own entry is untouched
    assert model.config._attn_implementation == "sdpa"
    assert_fallback_logits_match(model, ref)


@pytest.mark.slow
def test_left_padded_greedy_generate_matches_sdpa(enabled, flash_repo, saved_model):
    """Prefill with a 2-D padding mask, then decode steps (q_len 1 against a longer padded kv)."""
    model = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation=flash_repo).eval()
    ref = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa").eval()
    ids, mask = batch(left_pad=True)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    got = {}
    with torch.no_grad():
        ops = kernel_ops(loaded_for(model), lambda: got.setdefault("ids", model.generate(ids, **kw)))
        assert torch.equal(got["ids"], ref.generate(ids, **kw))
    assert any("varlen" in op for op in ops), ops  # prefill and decode steps carry the padding mask


# ------------------------------------------------------------------ (c) fallback and strict


@pytest.fixture
def missing_kernel_env(monkeypatch, request):
    """A kernel the Hub does not have, from an org we trust (so the reason is 'not found', not 'untrusted')."""
    try:
        request.getfixturevalue("local_hub")  # a live Hub that answers 'no such repo'
    except pytest.FixtureLookupError:
        pass
    api = sys.modules.get("kernel_loader.api")
    if hasattr(api, "clear_cache"):
        api.clear_cache()  # results are cached per process; each test starts from a cold load
    monkeypatch.setenv("KERNEL_LOADER_TRUST", MISSING_SPEC.split("/")[0])
    monkeypatch.delenv("KERNEL_LOADER_STRICT", raising=False)
    return MISSING_SPEC


@pytest.mark.slow
def test_missing_kernel_falls_back_to_sdpa_with_a_warning(enabled, missing_kernel_env, saved_model):
    spec = missing_kernel_env
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation=spec).eval()
    loaded = hook.loaded_kernels()[spec]
    assert loaded.fallback and loaded.variant is None and loaded.module is None
    assert loaded.mask_format == "sdpa"
    named = [str(w.message) for w in caught if spec in str(w.message) and loaded.fallback in str(w.message)]
    assert named, f"no warning names {spec!r} and its reason {loaded.fallback!r}: {[str(w.message) for w in caught]}"
    assert model.config._attn_implementation == spec
    assert ALL_ATTENTION_FUNCTIONS[spec] is loaded.attention
    ref = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa").eval()
    assert_fallback_logits_match(model, ref)


@pytest.mark.slow
def test_strict_mode_raises_and_a_later_non_strict_load_still_works(enabled, missing_kernel_env, saved_model,
                                                                    monkeypatch):
    from kernel_loader.errors import KernelUnavailable

    spec = missing_kernel_env
    monkeypatch.setenv("KERNEL_LOADER_STRICT", "1")
    with pytest.raises(KernelUnavailable):
        LlamaForCausalLM.from_pretrained(saved_model, attn_implementation=spec)
    model = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa")
    with pytest.raises(KernelUnavailable):
        model.set_attn_implementation(spec)
    assert model.config._attn_implementation == "sdpa"
    # transformers 5.22 marks a string loaded before loading it; the hook must undo that after a failure.
    monkeypatch.setenv("KERNEL_LOADER_STRICT", "0")
    with pytest.warns(Warning, match=spec):
        model.set_attn_implementation(spec)
    assert model.config._attn_implementation == spec
    assert hook.loaded_kernels()[spec].fallback


@pytest.mark.slow
def test_fallback_chain_registered_under_a_name(missing_kernel_env, flash_repo, saved_model):
    """transformers only accepts one 'org/name' per attn_implementation string, so a chain is registered under a
    name of the user's choosing (kernel_loader.integrations.transformers.load_and_register) and that name is given
    to from_pretrained."""
    from kernel_loader.integrations import transformers as integration

    chain = f"{missing_kernel_env},{flash_repo}"
    trust = f"{missing_kernel_env.split('/')[0]},{flash_repo.split('/')[0]}"
    loaded = integration.load_and_register(chain, name="fa-chain", trust=trust)
    assert loaded.repo_id == flash_repo and loaded.fallback is None  # the second link loaded
    assert ALL_ATTENTION_FUNCTIONS["fa-chain"] is loaded.attention
    assert ALL_MASK_ATTENTION_FUNCTIONS["fa-chain"] is flash_attention_mask
    model = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="fa-chain").eval()
    ref = LlamaForCausalLM.from_pretrained(saved_model, attn_implementation="sdpa").eval()
    ids, mask = batch(left_pad=True)
    with torch.no_grad():
        ops = kernel_ops(loaded, lambda: model(ids, attention_mask=mask))
        got, want = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert any("varlen" in op for op in ops), ops
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], **TOL[torch.float32])
