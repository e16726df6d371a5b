"""``load()``: the one straight path from a spec string to an attention function.

    spec --parse--> KernelSpec --detect--> SystemInfo --trust, resolve--> Resolution --fetch+verify--> folder
         --import--> module --adapt--> attention callables        (any KernelUnavailable -> sdpa, unless strict)
"""

from __future__ import annotations

import importlib.util
import os
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
    lock = lock if lock is not None else (os.environ.get("KERNEL_LOADER_LOCK") or None)
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
    from .cachestate import repo_lock

    system = detect()
    offline = hub_offline()
    entry = _lock_entry(spec, lock)
    how = check_trust(spec, offline=offline, trust=trust)
    # One process per repo at a time resolves + fetches + verifies: N ranks download each file once, and none
    # sees another's half-written variant. The others then find it verified in the cache (no Hub request).
    with repo_lock(spec.repo_id):
        res, path = _resolve_and_fetch(spec, system, offline, how, entry)
    module = import_variant(path)
    adapt = adapters.adapt_paged if spec.paged or adapters.is_paged_module(module) else adapters.adapt
    attention, sdpa_fn, mask_format = adapt(module, spec, device_type(res.variant))
    return LoadedKernel(spec=spec, repo_id=spec.repo_id, revision=res.revision, commit=res.commit,
                        variant=res.variant, module=module, fallback=None, attention=attention, sdpa=sdpa_fn,
                        mask_format=mask_format, path=path, resolution=res)


def _lock_entry(spec: KernelSpec, lock):
    """The lock file's entry for ``spec`` (None without a lock). A lock file that cannot be read is a
    configuration error (ValueError); a spec the lock does not cover falls back like any unavailable kernel."""
    if lock is None:
        return None
    from .lock import read_lock

    lockfile = read_lock(lock)
    try:
        return lockfile.entry(spec)
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="resolve") from None


def _resolve_and_fetch(spec: KernelSpec, system, offline: bool, how: str, entry):
    from dataclasses import replace

    from .cachestate import record_trust
    from .fetch import fetch
    from .trust import check_offline_commit

    target = spec if entry is None else replace(spec, revision=entry.commit, version=None)
    res = resolve(target, system, offline=offline)
    if entry is not None:
        res.revision = entry.ref  # recorded as refs/vN -> commit, so the locked version also resolves offline
    if res.variant is None:
        raise KernelUnavailable(f"no variant of {spec.repo_id}@{res.revision} for {system.variant}; {res.summary()}",
                                stage="resolve")
    locked = None
    if entry is not None and entry.variants:
        locked = entry.variants.get(res.variant)
        if locked is None:
            raise KernelUnavailable(f"variant {res.variant} of {spec.repo_id} is not in the lock file (locked: "
                                    f"{', '.join(sorted(entry.variants))}); re-run `kernel-loader lock`",
                                    stage="resolve")
    if how == "offline-cache":
        check_offline_commit(spec.repo_id, res.commit)
    path = fetch(spec, res, locked=locked)
    if not res.offline:
        try:
            record_trust(spec.repo_id, res.commit, how)
        except OSError:  # read-only cache: nothing new was written there either
            pass
    return res, path


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

    from .containment import check_build_id

    meta = Metadata.read_from_file(path / "metadata.json")
    name = meta.id
    try:
        check_build_id(name, where=f"variant {path.name}")  # also for local folders that no fetch checked
    except ValueError as e:
        raise KernelUnavailable(str(e), stage="import") from None
    if name in sys.modules:
        # Only reuse a module imported from this very folder: a metadata id such as 'os' or another kernel's id
        # must not hand back an unrelated module.
        existing = sys.modules[name]
        where = getattr(existing, "__file__", None)
        if where is not None and _same_build(Path(where).parent, path):
            return existing
        raise KernelUnavailable(f"variant {path.name}: its build id {name!r} is already taken by the module "
                                f"imported from {where or 'a built-in'}", stage="import")
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


def _same_build(a: Path, b: Path) -> bool:
    """Two variant folders hold the same build when their (verified) metadata.json bytes are identical."""
    try:
        return a.resolve() == b.resolve() or (a / "metadata.json").read_bytes() == (b / "metadata.json").read_bytes()
    except OSError:
        return False


def clear_cache() -> None:
    """Forget loaded kernels and which per-call fallback warnings were shown (for tests and after changing
    HF_ENDPOINT); modules stay imported."""
    with _lock:
        _loaded.clear()
        adapters._warned.clear()
