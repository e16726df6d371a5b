"""The model-level benchmark (kernel_loader/bench.py), its script (scripts/bench_model.py) and `kernel-loader bench`:
real transformers models (tiny configs, random weights), the real compiled CPU flash-attn2 variant and the paged
kernel, the session's local Hub. Figures here are not checked (a 2-core CI runner); structure, the proof that the
kernel ran (call counts), greedy tokens equal to sdpa's in float32, and the bad-input messages are."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_kernels import REPO_ROOT

from kernel_loader import bench
from kernel_loader.adapters import routing


def test_alternate_orders_runs_and_ratios_are_per_round():
    order = []
    seconds = {"sdpa": iter([9.0, 2.0, 4.0, 3.0]), "ours": iter([9.0, 1.0, 1.0, 2.0])}

    def make(name):
        def run():
            order.append(name)
            return next(seconds[name])  # its own measured seconds
        return run

    alt = bench.alternate({"sdpa": make("sdpa"), "ours": make("ours")}, rounds=3, warmup=1, work=10.0)
    assert order == ["sdpa", "ours"] * 4  # A B A B ..., warm-up round included
    s = alt.summary()
    assert s["ours"]["ratio_per_round"] == [2.0, 4.0, 1.5]
    assert s["ours"]["ratio_vs_sdpa"] == {"median": 2.0, "min": 1.5, "max": 4.0}
    assert s["sdpa"]["tokens_per_s"]["median"] == pytest.approx(10 / 3)


@pytest.fixture
def fa2_module(published_flash_attn2):
    """The CPU flash-attn2 module as load() gives it (from the Hub cache, like the other suites import it)."""
    from kernel_loader import api

    api.clear_cache()
    yield api.load(published_flash_attn2, strict=True).module
    api.clear_cache()


def test_kernel_calls_counts_custom_ops_in_worker_threads(fa2_module):
    import threading

    fa = fa2_module
    q = torch.randn(1, 16, 2, 32)

    class Model(torch.nn.Module):
        def forward(self, x):
            return fa.flash_attn_func(x, x, x, causal=True) + torch.nn.functional.scaled_dot_product_attention(x, x, x)

    model = Model()
    with bench.KernelCalls((), model) as calls:
        model(q)
        t = threading.Thread(target=model, args=(q,))
        t.start()
        t.join()
    assert calls.counts == {f"{fa.__name__}_api::fwd": 2}, calls.counts  # aten's sdpa is not counted
    assert "forward" not in model.__dict__  # unwrapped again


def test_routing_sends_cpu_decode_to_sdpa_and_off_means_the_kernel(fa2_module):
    from kernel_loader import adapters
    from kernel_loader.spec import parse_spec

    fa = fa2_module
    attention, _, _ = adapters.adapt(fa, parse_spec("kernels-community/flash-attn2"), "cpu")

    class Layer:
        is_causal, training = True, False

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(3, h, s, 64, generator=g) for h, s in ((8, 1), (2, 40), (2, 40)))
    ref = torch.softmax((q.double() @ k.double().repeat_interleave(4, 1).transpose(-1, -2)) * 0.125, -1) @ \
        v.double().repeat_interleave(4, 1)
    routing.set_enabled(True)  # the suite runs with routing off (tests/conftest.py)
    try:
        assert routing.route(q) is not None and "decode" in routing.route(q).line()
        for on in (True, False):
            routing.set_enabled(on)
            with bench.KernelCalls((), None) as calls:
                out, _ = attention(Layer(), q, k, v, None, scaling=0.125)
            assert (calls.total > 0) == (not on), calls.counts
            torch.testing.assert_close(out.double(), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
        assert any("decode" in line for line in routing.describe())
    finally:
        routing.set_enabled(False)


def test_cuda_routes_apply_only_on_the_arch_they_were_measured_on():
    on_h200 = routing.routes_for(set(), capability="9.0")
    assert {(r.device, r.phase) for r in on_h200} >= {("cuda", "decode"), ("cuda", "prefill")}
    assert all(r.capability in (None, "9.0") for r in on_h200)
    for other in (None, "8.0", "10.0"):  # no GPU, or a GPU nobody measured: the kernel keeps every call
        assert not [r for r in routing.routes_for(set(), capability=other) if r.device == "cuda"]
    assert any("sm_90" in line and "cuda" in line for line in routing.describe(set(), capability="9.0"))
    routing.set_enabled(True)
    try:  # a CPU query never takes a CUDA route, whatever this machine has
        q = torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)
        r = routing.route(q)
        assert r is None or r.device == "cpu"
    finally:
        routing.set_enabled(False)


def test_padding_mask_is_read_once_per_forward_and_again_when_it_changes():
    from kernel_loader.adapters.flash import _all_visible

    mask = torch.ones(2, 9, dtype=torch.long)
    assert _all_visible(mask, 0) and _all_visible(mask, 1)
    mask[1, 0] = 0  # in place: the version counter moves
    assert not _all_visible(mask, 2)
    other = torch.ones(2, 9, dtype=torch.long)  # another tensor: read afresh
    assert _all_visible(other, 0)
    assert not _all_visible(mask, 0)


def test_forward_memo_under_inference_mode_rereads_at_each_forwards_first_layer():
    """Inference tensors have no version counter: a buffer refilled in place between forwards must be read again
    (at layer 0), and within a forward (growing layer index) it is read once."""
    from kernel_loader.adapters.memo import ForwardMemo

    memo, reads = ForwardMemo(), []

    def read(t):
        reads.append(1)
        return bool(t.all())

    with torch.inference_mode():
        buf = torch.ones(4, dtype=torch.bool)
        assert all(memo.get(buf, layer, read) for layer in range(3)) and len(reads) == 1
        buf[2] = False  # refilled in place between forwards: invisible to a version check
        assert not memo.get(buf, 0, read) and len(reads) == 2
        assert not memo.get(buf, 1, read) and len(reads) == 2
        assert not memo.get(buf, None, read) and len(reads) == 3  # no layer index: never remembered


def test_bench_model_dry_run_script(built_flash_attn2, tmp_path):
    """The --device cuda code path (kernels imported from paths, no Hub) end to end on a tiny model."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_model.py"), "--dry-run", "--out",
                           str(out), "--tag", "ci", "--kernel-path", f"flash-attn2={built_flash_attn2.path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "bench_model_ci.json").read_text())
    assert (out / "bench_model_ci.md").read_text().count("| tiny | float32 |") >= 8
    assert res["machine"]["load_average"] and res["contention"]
    runs = {(r["workload"], r.get("tokens") or r.get("batch") or r.get("requests")): r for r in res["runs"]}
    assert set(w for w, _ in runs) == {"prefill", "decode", "continuous_batching"}
    for r in res["runs"]:
        assert "error" not in r, r
        assert r["order"][0] == "sdpa" and len(r["order"]) >= 2
        for impl in r["order"][1:]:
            chk = r["check"][impl]
            assert chk["kernel_calls"] > 0, (r["workload"], impl, chk)  # even "as routed": prefill uses the kernel
            assert chk.get("greedy_tokens_match", chk.get("argmax_match")) is True, (r["workload"], impl, chk)
            assert len(r[impl]["ratio_per_round"]) == r["rounds"]
    cb = runs[("continuous_batching", 4)]
    assert cb["order"] == ["sdpa", "flash-attn2", "paged-attention"]
    paged_calls = cb["check"]["paged-attention"]["calls"]
    assert any(k.endswith("paged_attention_varlen") for k in paged_calls), paged_calls
    decode = runs[("decode", 1)]
    assert decode["order"] == ["sdpa", "flash-attn2 (kernel alone)", "flash-attn2 (as routed)"]
    # routed: only the prefill step (one call per layer) reaches the kernel; alone: every step does
    alone, routed = (decode["check"][k]["kernel_calls"] for k in decode["order"][1:])
    assert routed == 2 and alone == 2 * decode["new_tokens"]


@pytest.fixture
def bench_cli(published_flash_attn2, capsys):
    from kernel_loader import api, cli

    def run(*argv):
        api.clear_cache()
        rc = cli.main(["bench", *argv, "--quick", "--json"])
        return rc, json.loads(capsys.readouterr().out)

    yield run
    api.clear_cache()


def test_cli_bench_runs_the_kernel_through_the_hub(bench_cli, published_flash_attn2):
    from kernel_loader.integrations import transformers as transformers_hook

    rc, rep = bench_cli(published_flash_attn2, "--dtype", "float32")
    assert rc == 0 and rep["problems"] == [] and rep["kernel"]["variant"].endswith("cpu-x86_64-linux")
    prefill = next(r for r in rep["runs"] if r["workload"] == "prefill")
    assert prefill["check"]["ours"]["kernel_calls"] > 0 and prefill["check"]["ours"]["argmax_match"]
    assert prefill["ours"]["tokens_per_s"]["median"] > 0 and prefill["sdpa"]["tokens_per_s"]["median"] > 0
    assert not transformers_hook.is_enabled()  # left as it found it


@pytest.mark.parametrize("case", ["unknown spec", "malformed spec", "absent device", "head dim"])
def test_cli_bench_bad_input_says_why_and_still_reports_sdpa(bench_cli, published_flash_attn2, case):
    argv, expect = {
        "unknown spec": (["kernels-community/not-published"], "did not load"),
        "malformed spec": (["not a spec"], "measuring sdpa only"),
        "absent device": ([published_flash_attn2, "--device", "cuda:7"], "is not available here"),
        "head dim": ([published_flash_attn2, "--head-dim", "20", "--dtype", "float32"], "head dim 20"),
    }[case]
    if case == "absent device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    rc, rep = bench_cli(*argv)
    assert rc == 1
    assert any(expect in p for p in rep["problems"]), rep["problems"]
    assert rep["runs"] and all(r["sdpa"]["tokens_per_s"]["median"] > 0 for r in rep["runs"])


def test_routed_sliding_window_decode_equals_the_masked_reference():
    """A routed decode query under a window: SDPA over the last window_left + 1 keys, same as the full flash mask."""
    from kernel_loader.adapters import masked_attention

    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(2, 4, 1, 32, generator=g), torch.randn(2, 2, 50, 32, generator=g), torch.randn(
        2, 2, 50, 32, generator=g)
    for window in ((7, 0), (60, 0), (0, 0)):
        fast = routing.sdpa_call(q, k, v, scale=0.2, causal=True, window=window)
        ref = masked_attention(q, k, v, scale=0.2, causal=True, window=window)
        torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-6)
