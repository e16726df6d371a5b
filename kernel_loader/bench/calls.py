"""Proof that a kernel ran: its torch ops and Python entry points counted during one untimed run."""

from __future__ import annotations

import contextlib
import threading
import warnings



# ------------------------------------------------------------------------------------------------ proof it ran

_BUILTIN_NAMESPACES = {"aten", "prims", "prim", "_c10d_functional", "profiler", "quantized", "debugprims"}


class KernelCalls(contextlib.AbstractContextManager):
    """Counts, while active, the kernel's torch ops (every op outside aten/prims seen by a dispatch mode, e.g.
    ``_flash_attn2_cpu_<id>_api::fwd``) and calls of the Python entry points of ``modules`` (for kernels written
    in plain torch ops, e.g. the paged kernel's CPU path, which the adapter looks up per call). Dispatch modes are
    per thread: with ``model`` its forward enters the mode in whichever thread runs it (continuous batching runs
    the model in a worker thread)."""

    def __init__(self, modules=(), model=None):
        self.modules = [m for m in modules if m is not None]
        self.model = model
        self.counts: dict[str, int] = {}
        self._saved = []
        self._active = threading.local()

    def _mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self.counts

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.namespace not in _BUILTIN_NAMESPACES:
                    key = f"{func.namespace}::{func._opname}"
                    counts[key] = counts.get(key, 0) + 1
                return func(*args, **(kwargs or {}))

        return _Count()

    @contextlib.contextmanager
    def counting(self):
        """The dispatch mode in this thread, once (nested entries do not count twice)."""
        if getattr(self._active, "on", False):
            yield
            return
        self._active.on = True
        try:
            with self._mode():
                yield
        finally:
            self._active.on = False

    def __enter__(self):
        counts = self.counts
        for m in self.modules:
            for n in [n for n in getattr(m, "__all__", ()) if callable(getattr(m, n, None))
                      and not isinstance(getattr(m, n), type)]:
                real = getattr(m, n)

                def wrapped(*a, _real=real, _key=f"{m.__name__}.{n}", **k):
                    counts[_key] = counts.get(_key, 0) + 1
                    return _real(*a, **k)

                self._saved.append((m, n, real))
                setattr(m, n, wrapped)
        if self.model is not None:
            forward = self.model.forward

            def counted_forward(*a, **k):
                with self.counting():
                    return forward(*a, **k)

            self.model.forward = counted_forward
        self._outer = self.counting()
        self._outer.__enter__()
        return self

    def __exit__(self, *exc):
        self._outer.__exit__(*exc)
        if self.model is not None:
            del self.model.forward  # back to the class's method
        for m, n, real in reversed(self._saved):
            setattr(m, n, real)
        self._saved.clear()
        return False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@contextlib.contextmanager
def caught_kernel_warnings():
    """Collect kernel_loader's per-call fallback warnings ("...; using sdpa for such calls") as strings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen: list[str] = []
        yield seen
    for w in caught:
        msg = str(w.message)
        if msg.startswith("kernel_loader:") and msg not in seen:
            seen.append(msg)
