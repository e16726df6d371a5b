"""The hook is installed by contract (the seams exist), not by version number; doctor reports its state; bad calls
get clear errors. Runs on whichever transformers is first on sys.path (the matrix runs it on each release)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kernel_loader.integrations import transformers_seams as seams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    from kernel_loader.integrations import transformers as hook

    return hook


@pytest.fixture
def clean_hook():
    hook = _hook()
    was = hook.is_enabled()
    hook.disable()
    yield hook
    hook.disable()
    if was:
        hook.enable()


def test_the_matrix_runs_the_tested_window():
    path = ROOT / "scripts" / "test_transformers_matrix"
    matrix = importlib.util.module_from_spec(importlib.util.spec_from_loader("matrix", loader=None))
    matrix.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), matrix.__dict__)
    assert tuple(matrix.VERSIONS) == seams.TESTED_TRANSFORMERS
    assert all((ROOT / f).exists() for f in matrix.FILES), matrix.FILES


def test_installed_release_has_the_seams():
    from packaging.version import Version

    status = seams.status(enabled=False)
    assert status.installable, status
    # a patch release of a tested minor counts as tested; a later minor is "newer"
    newer = Version(transformers.__version__).release[:2] > max(Version(v).release[:2]
                                                                for v in seams.TESTED_TRANSFORMERS)
    assert status.tested == (not newer), status
    assert ("newer than the releases" in status.reason) == newer, status
    by_name = {s.name: s for s in status.seams}
    assert all(s.present for s in status.seams if s.required), status.seams
    refusal = "refuses flash-named" in by_name["PreTrainedModel._check_and_adjust_attn_implementation"].detail
    source = Path(transformers.modeling_utils.__file__).read_text()
    assert refusal == ("does not support Flash Attention yet" in source)


def test_newer_release_installs_with_one_warning(clean_hook, monkeypatch):
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.31.0")
    with pytest.warns(UserWarning, match=r"5\.31\.0 is newer .*5\.22\.2, 5\.23\.0, 5\.24\.0.*installed"):
        clean_hook.enable()
    assert clean_hook.is_enabled()


@pytest.mark.parametrize("version", ["5.21.3", "4.57.0"])
def test_older_release_is_refused(clean_hook, monkeypatch, version):
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    with pytest.raises(seams.UnsupportedTransformersVersion, match=f"{version} predates 5.22"):
        clean_hook.enable(strict=True)
    assert not clean_hook.is_enabled()
    monkeypatch.delenv("KERNEL_LOADER_STRICT", raising=False)
    with pytest.warns(UserWarning, match=f"hook not installed: transformers {version} predates 5.22") as caught:
        clean_hook.enable()
    assert not clean_hook.is_enabled() and len(caught) == 1 and "\n" not in str(caught[0].message)


def test_missing_seam_is_named(clean_hook, monkeypatch):
    from transformers.integrations import hub_kernels

    def load_and_register_attn_kernel(name):  # a future signature without attn_implementation
        return None

    monkeypatch.setattr(hub_kernels, "load_and_register_attn_kernel", load_and_register_attn_kernel)
    with pytest.raises(seams.UnsupportedTransformersVersion,
                       match=r"load_and_register_attn_kernel: parameters \(name\)"):
        clean_hook.enable(strict=True)
    assert not clean_hook.is_enabled()


def test_doctor_reports_the_hook_state():
    code = "import sys; from kernel_loader.cli import main; sys.exit(main(['doctor', '--json']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    hook = json.loads(proc.stdout)["transformers_hook"]
    assert hook["transformers"] == transformers.__version__ and hook["installable"] is True, hook
    assert hook["seams"]["hub_kernels.load_and_register_attn_kernel"] is True, hook


# ------------------------------------------------------------------ bad calls reach a clear error


@pytest.fixture
def flash_attention(published_flash_attn2):
    from kernel_loader import api

    api.clear_cache()
    loaded = api.load(published_flash_attn2, strict=True)
    assert loaded.fallback is None
    return loaded


class _Layer(torch.nn.Module):
    is_causal = True
    layer_idx = 0


@pytest.mark.slow
def test_unknown_argument_is_an_error_naming_it(flash_attention):
    q = torch.randn(1, 4, 6, 32)
    k = torch.randn(1, 2, 6, 32)
    with pytest.raises(TypeError, match=r"_Layer passed attention_temperature=float"):
        flash_attention.attention(_Layer(), q, k, k, None, scaling=0.2, attention_temperature=0.5)


@pytest.mark.slow
def test_per_layer_lengths_without_cache_are_an_error(flash_attention):
    q = torch.randn(1, 4, 6, 32)
    k = torch.randn(1, 2, 6, 32)
    kw = dict(cu_seq_lens_q=torch.tensor([0, 6], dtype=torch.int32), max_length_q=6,
              cu_seq_lens_k={"full_attention": torch.tensor([0, 6], dtype=torch.int32)},
              max_length_k={"full_attention": 6})
    with pytest.raises(TypeError, match="per-layer-type dict"):
        flash_attention.attention(_Layer(), q, k, k, None, scaling=0.2, **kw)


@pytest.mark.slow
def test_bias_and_sinks_go_to_the_reference_with_one_warning(flash_attention):
    from kernel_loader.adapters.call import reference_attention

    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 6, 32, generator=g)
    k = torch.randn(2, 2, 6, 32, generator=g)
    v = torch.randn(2, 2, 6, 32, generator=g)
    sinks = torch.randn(4, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out, _ = flash_attention.attention(_Layer(), q, k, v, None, scaling=0.2, s_aux=sinks)
    named = [str(w.message) for w in caught if "s_aux" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]
    want = reference_attention(q, k, v, scale=0.2, causal=True, sinks=sinks)
    torch.testing.assert_close(out, want.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_packed_fallback_masks_per_sequence(flash_attention):
    """A packed call the kernel cannot take (output_attentions) still keeps the sequences apart."""
    from kernel_loader.adapters.call import packed_reference

    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, 4, 9, 32, generator=g)
    k = torch.randn(1, 2, 9, 32, generator=g)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with pytest.warns(UserWarning, match="output_attentions"):
        out, _ = flash_attention.attention(_Layer(), q, k, k, None, scaling=0.2, output_attentions=True,
                                           cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=5, max_length_k=5)
    want = packed_reference(q, k, k, cu, cu, scale=0.2, causal=True)
    torch.testing.assert_close(out, want.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_block_table_decode_path_appends_and_attends(flash_attention):
    """Continuous batching's decode fast path (transformers enables it for flash-named kernels on CUDA/XPU): one new
    token per sequence, the paged cache and block table as 5.24's ``cache.update`` leaves them in the kwargs. Run
    here on the CPU kernel's flash_attn_with_kvcache with the same arguments, against the reference."""
    from kernel_loader.adapters.call import reference_attention

    g = torch.Generator().manual_seed(7)
    page, pages, hk, hq, d = 4, 16, 2, 4, 32
    past = [5, 1, 8]
    k_cache = torch.randn(pages, page, hk, d, generator=g)
    v_cache = torch.randn(pages, page, hk, d, generator=g)
    tables = torch.tensor([[3, 9, 0], [7, 0, 0], [12, 2, 5]], dtype=torch.int32)
    q = torch.randn(1, hq, 3, d, generator=g)
    k_new = torch.randn(1, hk, 3, d, generator=g)
    v_new = torch.randn(1, hk, 3, d, generator=g)
    lens = torch.tensor([p + 1 for p in past])
    kw = dict(cu_seq_lens_q=torch.arange(4, dtype=torch.int32), max_length_q=1, max_length_k=1,
              cu_seq_lens_k=torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32),
              block_table=tables, k_cache=k_cache, v_cache=v_cache, read_index=[], write_index=[], is_causal=True)

    def gathered(cache, i, n):
        slots = [int(tables[i, j // page]) * page + j % page for j in range(n)]
        return cache.reshape(pages * page, hk, d)[slots].transpose(0, 1)[None]

    before_k = [gathered(k_cache, i, past[i]) for i in range(3)]
    before_v = [gathered(v_cache, i, past[i]) for i in range(3)]
    out, _ = flash_attention.attention(_Layer(), q, k_new, v_new, None, scaling=0.2, **kw)
    assert out.shape == (1, 3, hq, d)
    for i in range(3):
        keys = torch.cat([before_k[i], k_new[:, :, i:i + 1]], 2)
        vals = torch.cat([before_v[i], v_new[:, :, i:i + 1]], 2)
        want = reference_attention(q[:, :, i:i + 1], keys, vals, scale=0.2, causal=True)
        torch.testing.assert_close(out[:, i:i + 1], want.transpose(1, 2), atol=1e-5, rtol=1e-5)
        # the kernel appended the new token to the cache, where the next step reads it
        torch.testing.assert_close(gathered(k_cache, i, past[i] + 1)[:, :, -1], k_new[:, :, i])
