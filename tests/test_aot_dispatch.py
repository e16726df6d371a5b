"""The precompiled-kernel configuration space of flash-attn2 and flash-attn3, without building or a GPU.

The build compiles one cubin per (arch, configuration) the spec (kernel_repos/<repo>/aot/spec.py; flash-attn3's
links to flash-attn2's) yields; the dispatch (_aot_dispatch.py, shared) forms the configuration key of each call.
These tests check, for each repo with its own tiles and archs, that the two agree for every input SUPPORTED
admits on CUDA (property test), that the tile table has a config for every (kernel, arch, family), which
configurations load through TMA descriptors, and that the cubins' "both window edges on" convention gives exactly
flash_attn's visible band.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings, strategies as st  # noqa: E402

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from kernel_loader.build.aot import AotConfig, load_aot_config  # noqa: E402
from tiny_kernels import FLASH_ATTN2_DIR  # noqa: E402

REPOS = ("flash-attn2", "flash-attn3")


def _pkg_module(kernel_dir: Path, name: str):
    """A module of the repo's package imported without running its __init__ (no _ops, no op registration)."""
    alias = f"_aot_test_pkg_{kernel_dir.name.replace('-', '_')}"
    if alias not in sys.modules:
        pkg = types.ModuleType(alias)
        pkg.__path__ = [str(kernel_dir / "torch-ext" / kernel_dir.name.replace("-", "_"))]
        sys.modules[alias] = pkg
    return importlib.import_module(f"{alias}.{name}")


@dataclass
class Repo:
    kernel_dir: Path
    aot: AotConfig
    tiles: dict
    keys: object  # the package's _aot_keys
    dispatch: object  # _aot_dispatch
    checks: object  # _checks

    @property
    def package_dir(self) -> Path:
        return self.kernel_dir / "torch-ext" / self.kernel_dir.name.replace("-", "_")

    def configurations(self) -> dict[str, list[dict]]:
        """arch -> what the build compiles (the spec imports the Triton kernels: needs triton)."""
        pytest.importorskip("triton")
        from kernel_loader.build.aot.compile_cubins import _load_spec

        spec = _load_spec(str(self.aot.spec), str(self.package_dir))
        return {arch: spec.configurations(arch, self.tiles) for arch in self.aot.archs}


def _repo(name: str) -> Repo:
    kernel_dir = FLASH_ATTN2_DIR.parent / name
    aot = load_aot_config(kernel_dir)
    return Repo(kernel_dir, aot, tomllib.loads(aot.tiles.read_text()), _pkg_module(kernel_dir, "_aot_keys"),
                _pkg_module(kernel_dir, "_aot_dispatch"), _pkg_module(kernel_dir, "_checks"))


@pytest.fixture(scope="module", params=REPOS)
def repo(request) -> Repo:
    return _repo(request.param)


@pytest.fixture(scope="module")
def spec_keys(repo) -> dict[str, set[str]]:
    return {arch: {c["key"] for c in cfgs} for arch, cfgs in repo.configurations().items()}


_FA2 = _repo("flash-attn2")
dispatch, checks = _FA2.dispatch, _FA2.checks  # shared modules (flash-attn3's link to them)


def test_spec_compiles_exactly_the_keys_the_dispatch_knows(repo, spec_keys):
    want = set(repo.keys.all_keys())
    assert len(want) == len(repo.keys.all_keys())  # no key twice
    for arch, have in spec_keys.items():
        assert have == want, (arch, sorted(want - have)[:5], sorted(have - want)[:5])


def test_dispatch_space_is_what_supported_admits_on_cuda(repo):
    assert tuple(repo.keys.HEAD_DIMS) == tuple(repo.checks.GPU_HEAD_DIMS)
    assert {repo.dispatch._DT[d] for d in repo.checks.GPU_DTYPES} == set(repo.keys.DTYPES)


def test_every_kernel_arch_and_family_has_a_tile_config(repo):
    for kernel in ("fwd", "fwd_short", "bwd_dkdv", "bwd_dq"):
        for arch in repo.aot.archs:
            for fam in ("small", "mid", "big"):
                t = repo.tiles[kernel][arch][fam]
                assert t["block_m"] in (16, 32, 64, 128) and t["block_n"] in (16, 32, 64, 128)
                assert t["num_warps"] in (4, 8) and 1 <= t["num_stages"] <= 4
                assert set(t) <= {"block_m", "block_n", "num_warps", "num_stages", "tma"}
                # TMA: forward tiles of archs that have it (sm90+)
                assert "tma" not in t or (kernel.startswith("fwd") and arch in ("9.0", "10.0")), (kernel, arch, fam)
    for arch in repo.aot.archs:
        assert repo.tiles["bwd_delta"][arch]["all"]["block_m"] in (32, 64, 128)


def test_tma_descriptors_only_in_the_dense_forward_of_flash_attn3(repo):
    """flash-attn3 (sm90, like its JIT) loads the dense forward through device-side TMA descriptors; varlen and
    kv-cache forwards, the backward and every flash-attn2 kernel load with pointers. Short-query (decode)
    forwards pack a KV head's query heads into the tile rows instead, in both repos (no TMA tile for that)."""
    for arch, cfgs in repo.configurations().items():
        tma = {c["key"] for c in cfgs if c["constexprs"].get("USE_TMA")}
        if repo.kernel_dir.name == "flash-attn3":
            assert tma == {k for k in repo.keys.fwd_keys() if k.startswith("fwd/dense/")}, arch
        else:
            assert tma == set(), arch
        packed = {c["key"] for c in cfgs if c["constexprs"].get("PACK_GQA")}
        assert packed == {k for k in repo.keys.fwd_keys() if k.startswith("fwd_short/")}, arch


calls = st.fixed_dictionaries({
    "head_dim": st.sampled_from(checks.GPU_HEAD_DIMS),
    "dtype": st.sampled_from(checks.GPU_DTYPES),
    "softcap": st.sampled_from([0.0, 0.5, 30.0]),
    "varlen": st.booleans(),
    "kv": st.sampled_from(["none", "contiguous", "paged"]),
    "heads": st.sampled_from([(8, 8), (8, 2), (32, 1)]),
    "rows": st.sampled_from([1, 2, 16, 17, 128, 4096]),  # query rows: both sides of the short-query tiles
})


@settings(max_examples=200, deadline=None)
@given(call=calls)
def test_every_supported_call_has_a_cubin_on_every_arch(repo, spec_keys, call):
    d = repo.dispatch
    q = torch.empty(2, 3, call["heads"][0], call["head_dim"], dtype=call["dtype"], device="meta")
    if call["kv"] != "none":  # flash_attn_with_kvcache: dense q over a cache
        mode = d.fwd_mode(False, True, call["kv"] == "paged")
        needed = [d.fwd_config(q, mode, call["softcap"], call["rows"])]
    else:
        needed = [d.fwd_config(q, d.fwd_mode(call["varlen"], False, False), call["softcap"],
                                      call["rows"])]
        needed += d.bwd_configs(q, call["varlen"], call["softcap"])
    for arch, have in spec_keys.items():
        missing = [k for k in needed if k not in have]
        assert not missing, f"sm_{arch}: no cubin for {missing}"


def _band_mask(sq, sk, left, right):
    """Visible (query, key) pairs with both window edges on, as the cubins compute them."""
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    return (j >= i - left) & (j <= i + right)


def _flash_attn_mask(sq, sk, causal, window):
    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    m = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    return m


@settings(max_examples=300, deadline=None)
@given(sq=st.integers(1, 70), sk=st.integers(1, 70), causal=st.booleans(),
       left=st.sampled_from([-1, 0, 1, 5, 64]), right=st.sampled_from([-1, 0, 3, 64]))
def test_unbounded_window_edges_become_wider_than_any_sequence(sq, sk, causal, left, right):
    l2, r2 = dispatch._window(causal, (left, right), sq, sk)
    assert l2 >= 0 and r2 >= 0
    assert torch.equal(_band_mask(sq, sk, l2, r2), _flash_attn_mask(sq, sk, causal, (left, right)))


def test_misaligned_inputs_are_copied_to_meet_the_cubins_assumptions():
    base = torch.randn(2, 17, 4, 64)
    ok = base[:, 1:]  # strides multiples of 16 elements, pointer offset 4*64*4 bytes: aligned
    assert dispatch._fit(ok) is ok
    odd = torch.randn(1000)[1:].view(1, 9, 1, 111)[..., :64]  # pointer off by 4 bytes, row stride 111
    fixed = dispatch._fit(odd)
    assert fixed is not odd and fixed.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in fixed.stride()[:-1])
    assert torch.equal(fixed, odd)


NOARCH_AOT = {"sliding-window": "sliding_window", "paged-attention": "paged_attention"}


@pytest.mark.parametrize("repo", sorted(NOARCH_AOT))
def test_noarch_repo_spec_compiles_every_key_its_dispatch_asks_for(repo):
    """[torch-noarch] repos with aot.toml: stable-ABI target, the Triton module kept out, spec keys == dispatch keys."""
    pytest.importorskip("triton")
    from kernel_loader.build.aot.compile_cubins import _load_spec

    kdir = FLASH_ATTN2_DIR.parent / repo
    aot = load_aot_config(kdir)
    assert aot.stable_abi == "2.10" and aot.exclude == ("_triton_impl.py",)
    spec = _load_spec(str(aot.spec), str(kdir / "torch-ext" / NOARCH_AOT[repo]))
    repo_keys = importlib.import_module(spec.KERNEL_PACKAGE + "._aot_keys")
    tiles = tomllib.loads(aot.tiles.read_text())
    for arch in aot.archs:
        have = [c["key"] for c in spec.configurations(arch, tiles)]
        assert len(have) == len(set(have)) and set(have) == set(repo_keys.all_keys()), arch


def test_sliding_window_decode_tiles_are_the_dispatch_plans():
    sw_dir = FLASH_ATTN2_DIR.parent / "sliding-window"
    tiles = tomllib.loads(load_aot_config(sw_dir).tiles.read_text())
    pkg = types.ModuleType("_sw_aot_test_pkg")
    pkg.__path__ = [str(sw_dir / "torch-ext" / "sliding_window")]
    sys.modules.setdefault("_sw_aot_test_pkg", pkg)
    plan = importlib.import_module("_sw_aot_test_pkg._decode_plan")
    for arch, rows in tiles["decode"].items():
        assert {int(k[1:]): v["tile"] for k, v in rows.items()} == plan.TILE, arch
    # a split never leaves a partition empty and every partition is whole tiles
    for filled in (1, 63, 64, 65, 1000, 4096, 100_000):
        for batch, heads, kv in ((1, 8, 8), (4, 32, 8), (64, 64, 1)):
            p = plan.plan_ring_decode(batch, heads, kv, 128, filled, torch.device("meta"))
            assert p.part % p.tile == 0 and (p.nparts - 1) * p.part < filled <= p.nparts * p.part


# ---------------------------------------------------------------- paged-attention

PAGED_DIR = FLASH_ATTN2_DIR.parent / "paged-attention"
PAGED_ALIAS = "_paged_aot_test_pkg"


def _paged_module(name: str):
    if PAGED_ALIAS not in sys.modules:
        pkg = types.ModuleType(PAGED_ALIAS)
        pkg.__path__ = [str(PAGED_DIR / "torch-ext" / "paged_attention")]
        sys.modules[PAGED_ALIAS] = pkg
    return importlib.import_module(f"{PAGED_ALIAS}.{name}")


def test_paged_tiles_are_the_jit_tuning_and_the_dispatch_flash_tiles():
    pkeys, plan = _paged_module("_aot_keys"), _paged_module("_plan")
    aot = load_aot_config(PAGED_DIR)
    tiles = tomllib.loads(aot.tiles.read_text())
    for arch in aot.archs:
        for (layout, bucket), (tile, warps, stages, _) in plan.TUNING.items():
            t = tiles["decode"][arch][f"{layout}_{bucket}"]
            assert (t["tile"], t["num_warps"], t["num_stages"]) == (tile, warps, stages), (arch, layout, bucket)
            if layout == "flash":
                assert pkeys.FLASH_TILE[bucket] == tile
    for arch, overrides in tiles.get("override", {}).items():  # per-configuration tiles name real configurations
        assert arch in aot.archs and set(overrides) <= set(pkeys.all_keys()), arch
    assert set(pkeys.VLLM_PAGES) == set(_paged_module("_validate").BLOCK_SIZES)
    assert pkeys.FLASH_ROWS == plan.ROW_SIZES


@pytest.fixture(scope="module")
def paged_spec_keys() -> dict[str, set[str]]:
    pytest.importorskip("triton")
    from kernel_loader.build.aot.compile_cubins import _load_spec

    aot = load_aot_config(PAGED_DIR)
    spec = _load_spec(str(aot.spec), str(PAGED_DIR / "torch-ext" / "paged_attention"))
    tiles = tomllib.loads(aot.tiles.read_text())
    return {arch: {c["key"] for c in spec.configurations(arch, tiles)} for arch in aot.archs}


paged_calls = st.fixed_dictionaries({
    "layout": st.sampled_from(["vllm", "flash"]),
    "vllm_bs": st.sampled_from([8, 16, 32]),
    "flash_bs": st.integers(1, 600),
    "head_size": st.sampled_from(range(32, 257, 8)),
    "dtype": st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    "kv": st.sampled_from(["auto", "fp8", "fp8_e4m3"]),
    "storage": st.sampled_from([torch.uint8, torch.float8_e4m3fn]),
    "heads": st.sampled_from([(8, 8), (32, 8), (6, 2), (64, 1), (40, 5)]),
    "seqs": st.integers(1, 300),
    "max_len": st.integers(1, 1 << 17),
    "v2": st.booleans(),
    "flash_view": st.booleans(),  # K/V as views into one [N, bs, 2, H, D] buffer (strides 2 * H * D)
})


@settings(max_examples=300, deadline=None)
@given(call=paged_calls)
def test_every_decode_the_validator_accepts_has_cubins_or_runs_the_torch_path(paged_spec_keys, call):
    """Shapes and dtypes the validator accepts (meta tensors): a call either gets a key every arch compiled (decode,
    and the merge whenever the plan splits the context), or is one of the documented torch-path classes."""
    validate, dispatch, plan = _paged_module("_validate"), _paged_module("_aot_dispatch"), _paged_module("_plan")
    hq, hk = call["heads"]
    d = call["head_size"]
    fp8 = call["kv"] != "auto"
    store = call["storage"] if fp8 else call["dtype"]
    q = torch.empty(call["seqs"], hq, d, dtype=call["dtype"], device="meta")
    try:
        kc, vc, geom, bs = _paged_caches(call, validate, hk, d, store)
        validate.check_query(q, torch.empty_like(q), geom, hk)
    except ValueError:  # not an input the validator accepts (e.g. an fp8 vLLM key cache of head size 40)
        assume(False)
    key = dispatch.decode_key(q, kc, vc, geom)
    if key is None:  # the torch path: say why
        assert call["dtype"] == torch.float32 or d % 16 != 0, call
        return
    tile = keys_tile(call["layout"], d)
    p = plan.plan_decode(call["seqs"], hq, hk, d, call["max_len"], call["layout"], bs, tile, 4,
                         torch.device("meta"), 512 if call["v2"] else None, call["v2"], g_chunk=16)
    needed = [key] + ([] if p.direct else [_paged_module("_aot_keys").reduce_key(p.d_pad, key.split("/")[4])])
    for arch, have in paged_spec_keys.items():
        missing = [k for k in needed if k not in have]
        assert not missing, f"sm_{arch}: no cubin for {missing} ({call})"
    assert p.rows == int(key.split("/")[2][1:]) and p.part % p.tile == 0 and p.n_gchunks == -(-(hq // hk) // 16)


def keys_tile(layout: str, head_size: int) -> int:
    """The decode tile of the committed tiles (equal on every arch: test above)."""
    return _paged_module("_plan").TUNING[(layout, _paged_module("_plan").size_key(head_size))][0]


def _paged_caches(call, validate, hk, d, store):
    if call["layout"] == "vllm":
        bs = call["vllm_bs"]
        x = 16 // torch.empty((), dtype=store).element_size()
        kc = torch.empty(50, hk, d // x, bs, x, dtype=store, device="meta")
        vc = torch.empty(50, hk, d, bs, dtype=store, device="meta")
        return kc, vc, validate.vllm_geometry(kc, vc, call["kv"], call["dtype"]), bs
    bs = call["flash_bs"]
    if call["flash_view"]:
        both = torch.empty(50, bs, 2, hk, d, dtype=store, device="meta")
        kc, vc = both[:, :, 0], both[:, :, 1]
    else:
        kc = torch.empty(50, bs, hk, d, dtype=store, device="meta")
        vc = torch.empty_like(kc)
    return kc, vc, validate.flash_geometry(kc, vc, call["kv"], call["dtype"]), bs
