"""The public names: each is its implementation's own object (so a signature cannot drift), bad function names
in a spec are refused before any socket opens, and disable() restores transformers' interfaces after every way
of registering."""

from __future__ import annotations

import inspect
import socket

import pytest

import kernel_loader


@pytest.mark.parametrize("name", sorted(kernel_loader._EXPORTS))
def test_every_public_name_is_its_implementation(name):
    import importlib

    real = getattr(importlib.import_module(kernel_loader._EXPORTS[name]), name)
    public = getattr(kernel_loader, name)
    assert public is real
    if inspect.isfunction(real):
        assert inspect.signature(public) == inspect.signature(real)
    assert name in kernel_loader.__all__ and name in dir(kernel_loader)


def test_load_and_sdpa_like_take_the_same_keywords():
    load, sdpa_like = inspect.signature(kernel_loader.load), inspect.signature(kernel_loader.sdpa_like)
    assert list(load.parameters) == list(sdpa_like.parameters)
    assert {"version", "strict", "trust", "lock", "selftest"} <= set(load.parameters)
    assert kernel_loader.__version__ == "0.1.0"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kernel_loader.nope  # noqa: B018


@pytest.fixture
def no_sockets(monkeypatch):
    """Every socket connect fails (and is counted) while the test runs."""
    attempts = []

    def connect(sock, address):
        attempts.append(address)
        raise OSError(f"socket guard: connect to {address} refused")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda s, a: connect(s, a))
    monkeypatch.setenv("KERNEL_LOADER_TRUST", "")  # an untrusted org would otherwise ask the Hub first
    return attempts


PRIVATE_FUNCTIONS = ["org/repo:__class__", "org/repo:__init__", "org/repo@v1:__getattr__", "paged|org/repo:_private",
                     "org/repo:_", "org/repo:__"]


@pytest.mark.parametrize("spec", PRIVATE_FUNCTIONS)
def test_dunder_or_private_function_is_a_value_error_before_any_socket(spec, no_sockets):
    from kernel_loader.integrations import transformers as integration

    for call in (kernel_loader.load, kernel_loader.sdpa_like, integration.load_and_register):
        with pytest.raises(ValueError, match=r"function '_\w*' is private \(starts with '_'\)"):
            call(spec, strict=False)
    with pytest.raises(ValueError, match="is private"):
        kernel_loader.load(f"org/other,{spec}")  # a chain checks every link before loading any
    assert no_sockets == []


def test_public_function_names_still_parse():
    assert kernel_loader.parse_spec("org/repo:flash_attn_func").function == "flash_attn_func"
    assert kernel_loader.parse_spec("org/repo:fn_").function == "fn_"


def test_disable_restores_both_interfaces_after_every_registration_path():
    pytest.importorskip("transformers")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.integrations import hub_kernels

    from kernel_loader import api, registry
    from kernel_loader.integrations import transformers as integration
    from kernel_loader.spec import parse_spec

    attn, mask = AttentionInterface._global_mapping, AttentionMaskInterface._global_mapping

    def before(name):
        return attn.get(name, "absent"), mask.get(name, "absent")

    def sentinel(*a, **k):
        raise AssertionError("the sentinel must only be restored, never called")

    # A kernel that fell back: no Hub, no module, the SDPA attention (the real LoadedKernel of a fallback).
    fallback = api._fallback(parse_spec("acme/gone"), "test: nothing published")
    names = ["by-register", "paged|by-register", "by-register", "by-load-and-register", "acme/hooked",
             "sdpa"]  # "sdpa" exists in transformers: overwritten, then restored to transformers' own
    was = {n: before(n) for n in [*names, "by-register"]}
    integration.disable()
    integration.enable()
    try:
        integration.register("by-register", fallback)
        integration.register("paged|by-register", fallback)  # also answers the stripped name
        integration.register("sdpa", fallback)
        integration._loader = lambda spec, strict=None: fallback  # the hook's load, without a Hub
        module = hub_kernels.load_and_register_attn_kernel("acme/hooked")
        assert module.flash_attn_forward is fallback.attention
        integration._loader = None
        attn["by-load-and-register"], mask["by-load-and-register"] = sentinel, sentinel
        was["by-load-and-register"] = before("by-load-and-register")
        from kernel_loader.errors import KernelFallbackWarning

        with kernel_loader.offline(), pytest.warns(KernelFallbackWarning, match="acme/gone -> sdpa"):
            integration.load_and_register("acme/gone", name="by-load-and-register", strict=False, trust="acme")
        for n in ("by-register", "paged|by-register", "sdpa", "acme/hooked", "by-load-and-register"):
            assert attn[n] is not was[n][0] and mask[n] is sdpa_mask, n
        assert registry.get("by-register") is fallback and registry.get("acme/hooked") is fallback
    finally:
        integration._loader = None
        integration.disable()
    assert hub_kernels.load_and_register_attn_kernel is not integration._load_and_register
    for n, (a, m) in was.items():
        assert before(n) == (a, m), n
    attn.pop("by-load-and-register", None)
    mask.pop("by-load-and-register", None)
