"""Real transformers models (tiny local configs, random weights) on the real CPU flash-attn2 kernel published on the
local Hub, through ``kernel_loader.enable()`` with no ``force``, on whichever transformers is first on sys.path
(``scripts/test_transformers_matrix`` runs this file on 5.22.2, 5.23.0 and 5.24.0).

Each model: fp32 logits with left padding within 1e-4 of the reference implementation (sdpa, or eager where the model
has no sdpa), greedy tokens equal, the kernel's own ops ran (torch profiler, the build's op namespace), and no
per-call fallback warning. T5 declares no flash support (it adds a relative position bias to every call's scores):
the model gets transformers' sdpa with the reason named once, and its logits equal sdpa's. Llava takes a sub-config dict, through from_pretrained and
through set_attn_implementation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

import kernel_loader  # noqa: E402

pytestmark = pytest.mark.slow  # builds the compiled CPU flash-attn2 variant once per session

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def flash_repo(published_flash_attn2):
    return published_flash_attn2


@pytest.fixture(scope="module", autouse=True)
def sdpa_bidirectional():
    """The reference for a bidirectional decoder: transformers' sdpa with a padding-only mask. (Gemma's
    ``use_bidirectional_attention`` makes the layers non-causal but the model still builds a causal mask for sdpa,
    while the flash path follows ``module.is_causal``, so plain "sdpa" is not a bidirectional reference.)"""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask

    def mask(*args, **kwargs):
        kwargs["mask_function"] = bidirectional_mask_function
        return sdpa_mask(*args, **kwargs)

    AttentionInterface.register("sdpa_bidirectional", sdpa_attention_forward)
    AttentionMaskInterface.register("sdpa_bidirectional", mask)
    yield
    AttentionInterface._global_mapping.pop("sdpa_bidirectional", None)
    AttentionMaskInterface._global_mapping.pop("sdpa_bidirectional", None)


@pytest.fixture
def enabled():
    from kernel_loader import api

    api.clear_cache()
    kernel_loader.enable()
    yield
    _hook().disable()
    api.clear_cache()


def _hook():
    from kernel_loader.integrations import transformers as hook

    return hook


@dataclass
class Case:
    """One model family: how to build it, what to feed it, what to compare against."""

    name: str
    build: Callable[[], "transformers.PreTrainedModel"]
    reference: str = "sdpa"
    generate: bool = True
    kernel_runs: bool = True  # False: every call must go to sdpa (the reason is matched by `reason`)
    reason: str | None = None
    sub_config_dict: bool = False  # attn_implementation given as {"text_config": spec}
    inputs: Callable[[], dict] = field(default=None)


def _tok_batch(vocab=128, b=3, s=12, pad=(0, 5, 2)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (b, s), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                                        pad_token_id=0))


def _qwen3_mixed():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # window 4 < sequence 12: the sliding layer's output differs from full attention
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        use_sliding_window=True, sliding_window=4, max_window_layers=0,
                                        layer_types=["sliding_attention", "full_attention"],
                                        initializer_range=0.5, pad_token_id=0))


def _gemma2_softcap():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          query_pre_attn_scalar=16, attn_logit_softcapping=2.0,
                                          final_logit_softcapping=None, sliding_window=4, initializer_range=0.5,
                                          pad_token_id=0))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            head_dim=16, sliding_window=4, initializer_range=0.5, pad_token_id=0))


def _gemma_bidirectional():
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        use_bidirectional_attention=True, initializer_range=0.5, pad_token_id=0))


def _modernbert():
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    # local (windowed, bidirectional) layers with window 6 < 12, and a global layer
    return ModernBertForMaskedLM(ModernBertConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=3, num_attention_heads=4, local_attention=6,
                                                  global_attn_every_n_layers=3, initializer_range=0.5,
                                                  pad_token_id=0, max_position_embeddings=64))


def _t5():
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                               num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                                               relative_attention_num_buckets=8, initializer_factor=4.0))


def _t5_inputs():
    batch = _tok_batch()
    g = torch.Generator().manual_seed(2)
    batch["decoder_input_ids"] = torch.randint(3, 128, (3, 5), generator=g)
    return batch


IMAGE_TOKEN = 127
N_PATCHES = 16  # 32x32 image, patch 8, CLS dropped


def _llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, pad_token_id=0)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2, projection_dim=32)
    return LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision,
                                                     image_token_index=IMAGE_TOKEN,
                                                     vision_feature_select_strategy="default",
                                                     vision_feature_layer=-1))


def _llava_inputs():
    g = torch.Generator().manual_seed(3)
    b, text_len, pad = 2, 6, (0, 3)
    ids = torch.randint(3, 100, (b, N_PATCHES + text_len), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad):
        ids[row, n:n + N_PATCHES] = IMAGE_TOKEN
        mask[row, :n] = 0
        ids[row, :n] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(b, 3, 32, 32, generator=g)}


CASES = [
    Case("llama", _llama),
    Case("qwen3-mixed-sliding", _qwen3_mixed),
    Case("gemma2-softcap", _gemma2_softcap, reference="eager"),  # sdpa has no softcap
    Case("mistral-sliding", _mistral),
    Case("gemma-bidirectional", _gemma_bidirectional, reference="sdpa_bidirectional", generate=False),
    Case("modernbert", _modernbert, generate=False),
    # T5 declares no flash support (its relative position bias is added to every call's scores): sdpa, named once
    Case("t5", _t5, kernel_runs=False, reason="_supports_flash_attn = False", inputs=_t5_inputs),
    Case("llava-dict", _llava, sub_config_dict=True, inputs=_llava_inputs),
]


def _build(case: Case, tmp_path):
    torch.manual_seed(0)
    model = case.build().eval()
    path = tmp_path / case.name
    model.save_pretrained(path)
    return path


def _attn(case: Case, value: str):
    return {"text_config": value, "vision_config": "sdpa"} if case.sub_config_dict else value


def _kernel_ops(module_name: str, fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    prefix = module_name + "::"
    return out, {e.key[len(prefix):] for e in prof.key_averages() if e.key.startswith(prefix)}


def _loaded(spec):
    return _hook().loaded_kernels()[spec]


def _compare(case, model, ref, spec):
    inputs = (case.inputs or _tok_batch)()
    with torch.no_grad():
        want = ref(**inputs).logits
        module_name = _loaded(spec).module.__name__ if spec in _hook().loaded_kernels() else "<not loaded>"
        got, ops = _kernel_ops(module_name, lambda: model(**inputs).logits)
    keep = inputs["attention_mask"].bool()
    if got.shape[1] != keep.shape[1]:  # T5: logits are over the decoder tokens (no padding there)
        keep = torch.ones(got.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(got[keep], want[keep], atol=ATOL, rtol=RTOL)
    if case.kernel_runs:
        assert ops, f"{case.name}: no op of the kernel ({module_name}) ran"
    else:
        assert not ops, f"{case.name}: the kernel ran although it cannot apply {case.reason}: {ops}"
    if case.generate:
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            assert torch.equal(model.generate(**inputs, **kw), ref.generate(**inputs, **kw)), case.name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_from_pretrained_matches_reference(enabled, flash_repo, tmp_path, case):
    path = _build(case, tmp_path)
    auto = _auto_class(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = auto.from_pretrained(path, attn_implementation=_attn(case, flash_repo)).eval()
        ref = auto.from_pretrained(path, attn_implementation=_attn(case, case.reference)).eval()
        _compare(case, model, ref, flash_repo)
    from kernel_loader.metadata_checks import DirtyBuildWarning  # a session build of an edited tree says so

    ours = [str(w.message) for w in caught if str(w.message).startswith("kernel_loader:")
            and not issubclass(w.category, DirtyBuildWarning)]
    if case.kernel_runs:
        assert not ours, ours
    else:
        named = [m for m in ours if case.reason in m]
        assert len(named) == 1, ours  # named once, not once per call


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("llama", "llava-dict", "t5")],
                         ids=lambda c: c.name)
def test_set_attn_implementation_matches_reference(enabled, flash_repo, tmp_path, case):
    path = _build(case, tmp_path)
    auto = _auto_class(case)
    model = auto.from_pretrained(path, attn_implementation=_attn(case, case.reference)).eval()
    ref = auto.from_pretrained(path, attn_implementation=_attn(case, case.reference)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.set_attn_implementation(_attn(case, flash_repo))
        text = model.config.get_text_config()
        assert text._attn_implementation == (flash_repo if case.kernel_runs else "sdpa")
        _compare(case, model, ref, flash_repo)


def _auto_class(case):
    return {"modernbert": transformers.AutoModelForMaskedLM, "t5": transformers.AutoModelForSeq2SeqLM,
            "llava-dict": transformers.AutoModelForImageTextToText}.get(case.name, transformers.AutoModelForCausalLM)
