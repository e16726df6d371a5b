"""``load()``: the one straight path from a spec string to an attention function.

    spec --parse--> KernelSpec --detect--> SystemInfo --trust, resolve--> Resolution --fetch+verify--> folder
         --import--> module --adapt--> attention callables        (any KernelUnavailable -> sdpa, unless strict)
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

from . import adapters
from .fallback import KernelUnavailable, is_strict, warn_fallback
from .resolve import Resolution, hub_offline, resolve
from .spec import KernelSpec, parse_spec
from .system import detect
from .trust import check_trust


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
         trust: str | list[str] | None = None, selftest: bool = False) -> LoadedKernel:
    """Load a Hub kernel for this machine, or SDPA with ``.fallback`` set to why.

    ``strict`` (default: ``KERNEL_LOADER_STRICT``) raises :class:`KernelUnavailable` instead of falling back.
    ``trust`` overrides ``KERNEL_LOADER_TRUST`` (orgs or org/name ids, comma list or sequence).
    Results are cached per process, so a model with 32 layers resolves once.
    ``selftest=True`` runs the variant on the reference.safetensors it was built with (see
    :mod:`kernel_loader.selftest`); wrong numbers are a KernelUnavailable (stage "selftest") like any other.
    """
    parsed = parse_spec(spec, version=version)  # bad strings are programming errors: always raise
    strict = is_strict(strict)
    key = (parsed, str(trust), bool(selftest))
    with _lock:
        cached = _loaded.get(key)
        if cached is not None and (cached.fallback is None or not strict):
            return cached
        try:
            loaded = _load(parsed, trust)
            if selftest:
                _selftest(loaded)
        except KernelUnavailable as e:
            if strict:
                raise
            warn_fallback(str(parsed), e.reason)
            loaded = _fallback(parsed, e.reason)
        _loaded[key] = loaded
        return loaded


def _load(spec: KernelSpec, trust) -> LoadedKernel:
    from .fetch import fetch

    system = detect()
    offline = hub_offline()
    check_trust(spec, offline=offline, trust=trust)
    res = resolve(spec, system, offline=offline)
    if res.variant is None:
        raise KernelUnavailable(f"no variant of {spec.repo_id}@{res.revision} for {system.variant}; {res.summary()}",
                                stage="resolve")
    path = fetch(spec, res)
    module = import_variant(path)
    adapt = adapters.adapt_paged if spec.paged or adapters.is_paged_module(module) else adapters.adapt
    attention, sdpa_fn, mask_format = adapt(module, spec, device_type(res.variant))
    return LoadedKernel(spec=spec, repo_id=spec.repo_id, revision=res.revision, commit=res.commit,
                        variant=res.variant, module=module, fallback=None, attention=attention, sdpa=sdpa_fn,
                        mask_format=mask_format, path=path, resolution=res)


def _selftest(loaded: LoadedKernel) -> None:
    from .selftest import check_loaded

    check_loaded(loaded.module, loaded.path, device_type(loaded.variant))


def device_type(variant: str) -> str:
    """torch device type a variant runs on: 'cpu' for cpu builds, 'cuda' for cuXY/rocm/noarch torch-cuda."""
    from kernels.variants import NoarchVariant, parse_variant

    v = parse_variant(variant)
    name = v.arch.backend_name if isinstance(v, NoarchVariant) else v.arch.backend.name
    return {"rocm": "cuda", "metal": "mps", "universal": "cpu"}.get(name, name)


def _fallback(spec: KernelSpec, reason: str) -> LoadedKernel:
    return LoadedKernel(spec=spec, repo_id=spec.repo_id, revision=spec.revision, commit=None, variant=None,
                        module=None, fallback=reason, attention=adapters.sdpa_attention, sdpa=adapters.torch_sdpa,
                        mask_format="sdpa")


def import_variant(path: Path) -> ModuleType:
    """Import a verified variant folder as a package named by its build id (unique per build, so two versions
    of one kernel live side by side)."""
    from kernels._rust import Metadata

    meta = Metadata.read_from_file(path / "metadata.json")
    name = meta.id
    if name in sys.modules:
        return sys.modules[name]
    init = path / "__init__.py"
    if not init.is_file():
        raise KernelUnavailable(f"variant {path.name} has no __init__.py", stage="import")
    module_spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # never add files next to verified ones
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        first = str(e).splitlines()[0] if str(e) else ""
        raise KernelUnavailable(f"import of variant {path.name} failed: {type(e).__name__}: {first}",
                                stage="import") from e
    finally:
        sys.dont_write_bytecode = saved
    return module


def clear_cache() -> None:
    """Forget loaded kernels (for tests and after changing HF_ENDPOINT); modules stay imported."""
    with _lock:
        _loaded.clear()
