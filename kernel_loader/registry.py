"""Our registry: a plain name -> LoadedKernel map, for plain torch code (``registry.get(name).attention`` /
``.sdpa``). Registering a name in transformers' interfaces as well is
:func:`kernel_loader.integrations.transformers.register` (the only writer into them), which records the name here
too."""

from __future__ import annotations

import threading

from .api import LoadedKernel

_lock = threading.Lock()
_registry: dict[str, LoadedKernel] = {}


def register(name: str, loaded: LoadedKernel) -> LoadedKernel:
    with _lock:
        _registry[name] = loaded
    return loaded


def get(name: str) -> LoadedKernel:
    try:
        return _registry[name]
    except KeyError:
        have = ", ".join(sorted(_registry)) or "none"
        raise KeyError(f"no kernel registered as {name!r}; registered: {have}") from None


def registered() -> dict[str, LoadedKernel]:
    return dict(_registry)
