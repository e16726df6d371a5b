"""``load()``: the one straight path from a spec string to an attention function.

    spec --parse--> KernelSpec --pipeline (trust, lock, resolve, fetch, verify)--> folder
         --import--> module --adapt--> attention callables        (any KernelUnavailable -> sdpa, unless strict)

Fallback chains (``"org/a,org/b"``) and the per-process cache of loaded kernels are here too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

from . import adapters
from .env import env_text
from .errors import KernelUnavailable
from .fallback import is_strict, warn_fallback
from .importer import import_variant
from .metadata_checks import check_variant_metadata
from .pipeline import acquire
from .resolve import Resolution
from .selftest.check import check_loaded
from .spec import KernelSpec, parse_spec
from .variants import device_type


@dataclass
class LoadedKernel:
    spec: KernelSpec
    repo_id: str
    revision: str | None  # the revision resolved (vN branch, tag or commit asked for)
    commit: str | None  # the commit the files came from
    variant: str | None  # None when it fell back
    module: ModuleType | None
    fallback: str | None  # None, or the one-line reason SDPA is used instead
    attention: Callable = field(repr=False)  # transformers AttentionInterface signature
    sdpa: Callable = field(repr=False)  # torch.nn.functional.scaled_dot_product_attention signature
    mask_format: str = "sdpa"  # "flash" (None or 2-D padding mask) or "sdpa" (4-D mask)
    path: Path | None = None  # verified variant folder
    resolution: Resolution | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.fallback is None


_lock = threading.RLock()
_loaded: dict[tuple, LoadedKernel] = {}


def load(spec: str | KernelSpec, *, version: int | None = None, strict: bool | None = None,
         trust: str | list[str] | None = None, lock: str | Path | None = None,
         selftest: bool = False) -> LoadedKernel:
    """Load a Hub kernel for this machine, or SDPA with ``.fallback`` set to why.

    ``strict`` (default: ``KERNEL_LOADER_STRICT``) raises :class:`KernelUnavailable` instead of falling back.
    ``trust`` overrides ``KERNEL_LOADER_TRUST`` (orgs or org/name ids, comma list or sequence).
    Results are cached per process, so a model with 32 layers resolves once.
    ``selftest=True`` runs the variant on the reference.safetensors it was built with (see
    :mod:`kernel_loader.selftest`); wrong numbers are a KernelUnavailable (stage "selftest") like any other.
    ``lock`` (default: ``KERNEL_LOADER_LOCK``) is a kernels.lock: the repo is pinned to its locked commit and a
    variant whose metadata.json differs from the locked digest is refused (see :mod:`kernel_loader.lock`).

    A fallback chain is a comma-separated string (``"org/flash-attn3,org/flash-attn2"``) or a list of specs:
    each is tried in order and the first that loads is returned; when none does, SDPA, with every link's reason.
    (Commas never occur in repo ids, revisions or function names, so the chain syntax is unambiguous.)
    """
    if isinstance(spec, (list, tuple)) or (isinstance(spec, str) and "," in spec):
        return _load_chain(spec, version=version, strict=strict, trust=trust, lock=lock, selftest=selftest)
    parsed = parse_spec(spec, version=version)  # bad strings are programming errors: always raise
    strict = is_strict(strict)
    lock = lock if lock is not None else env_text("KERNEL_LOADER_LOCK")
    key = (parsed, str(trust), str(lock), bool(selftest))
    with _lock:
        cached = _loaded.get(key)
        if cached is not None and (cached.fallback is None or not strict):
            return cached
        try:
            loaded = _load(parsed, trust, lock)
            if selftest:
                _selftest(loaded)
        except KernelUnavailable as e:
            if strict:
                raise
            warn_fallback(str(parsed), e.reason)
            loaded = _fallback(parsed, e.reason)
        _loaded[key] = loaded
        return loaded


def sdpa_like(spec: str | KernelSpec, *, version: int | None = None, strict: bool | None = None,
              trust: str | list[str] | None = None, lock: str | Path | None = None,
              selftest: bool = False) -> Callable:
    """A drop-in for ``torch.nn.functional.scaled_dot_product_attention`` backed by the kernel ``spec``
    ((B, H, S, D) layout, attn_mask, is_causal, scale, enable_gqa); calls the kernel cannot take go to SDPA.
    The keywords are :func:`load`'s."""
    return load(spec, version=version, strict=strict, trust=trust, lock=lock, selftest=selftest).sdpa


def _load_chain(chain, *, strict, **kwargs) -> LoadedKernel:
    """``load`` over a fallback chain: the first link that loads, else SDPA with every link's reason."""
    links = [s.strip() for s in chain.split(",")] if isinstance(chain, str) else list(chain)
    if not links or any(not (isinstance(s, KernelSpec) or (isinstance(s, str) and s)) for s in links):
        raise ValueError(f"kernel fallback chain {chain!r} has an empty link; expected 'org/a,org/b'")
    specs = [parse_spec(s) for s in links]  # bad strings always raise, as for one spec
    reasons = []
    for spec in specs:
        try:
            return load(spec, strict=True, **kwargs)
        except KernelUnavailable as e:
            reasons.append(f"{spec}: {e.reason}")
    reason = "no kernel of the chain loaded; " + "; ".join(reasons)
    if is_strict(strict):
        raise KernelUnavailable(reason, stage="chain")
    label = ",".join(str(s) for s in specs)
    warn_fallback(label, reason)
    return _fallback(specs[0], reason)


def _load(spec: KernelSpec, trust, lock=None) -> LoadedKernel:
    (got,) = acquire(spec, trust=trust, lock=lock)
    res, path = got.resolution, got.path
    check_variant_metadata(path, label=str(spec), variant=res.variant)  # kernels_minver, python-depends, dirty
    module = import_variant(path)
    adapt = adapters.adapt_paged if spec.paged or adapters.is_paged_module(module) else adapters.adapt
    attention, sdpa_fn, mask_format = adapt(module, spec, device_type(res.variant))
    return LoadedKernel(spec=spec, repo_id=spec.repo_id, revision=res.revision, commit=res.commit,
                        variant=res.variant, module=module, fallback=None, attention=attention, sdpa=sdpa_fn,
                        mask_format=mask_format, path=path, resolution=res)


def _selftest(loaded: LoadedKernel) -> None:
    check_loaded(loaded.module, loaded.path, device_type(loaded.variant))


def _fallback(spec: KernelSpec, reason: str) -> LoadedKernel:
    return LoadedKernel(spec=spec, repo_id=spec.repo_id, revision=spec.revision, commit=None, variant=None,
                        module=None, fallback=reason, attention=adapters.sdpa_attention, sdpa=adapters.torch_sdpa,
                        mask_format="sdpa")


def clear_cache() -> None:
    """Forget loaded kernels and which per-call fallback warnings were shown (for tests and after changing
    HF_ENDPOINT); modules stay imported."""
    with _lock:
        _loaded.clear()
        adapters.forget_warnings()
