"""What a kernel module says it can take, typed: built once from its ``SUPPORTED`` dict and used by every adapter.

``SUPPORTED`` keys read (all optional): ``dtypes`` (torch dtypes or their names, e.g. ``"bfloat16"``),
``head_dims`` (a container; None = any), ``backward`` (bool), ``devices`` (device types; missing or empty: the
variant's own device type), ``dtypes_by_device`` / ``head_dims_by_device`` (a device type -> its own limits,
winning over ``dtypes`` / ``head_dims`` on that device). Other keys are the kernel's own and are not read here.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from types import ModuleType

import torch


def _dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"SUPPORTED dtype {value!r} is not a torch dtype (e.g. torch.bfloat16 or 'bfloat16')")
    return found


def _dtypes(values) -> tuple[torch.dtype, ...]:
    return tuple(_dtype(v) for v in values)


def _lookup(head_dims):
    """A frozenset for the per-call membership test when the container can be listed (a tuple of 32 head dims
    is a linear scan each call); other containers (a range, a custom object) are kept as given."""
    if head_dims is None or isinstance(head_dims, (range, frozenset)):
        return head_dims
    try:
        return frozenset(head_dims)
    except TypeError:
        return head_dims


@dataclass(frozen=True)
class Capabilities:
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    head_dims: Container | None = None  # None = any
    backward: bool = False
    dtypes_by_device: dict = field(default_factory=dict)
    head_dims_by_device: dict = field(default_factory=dict)

    @classmethod
    def of(cls, module: ModuleType, device_type: str,
           default_dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)) -> "Capabilities":
        supported = dict(getattr(module, "SUPPORTED", {}) or {})
        devices = supported.get("devices") or device_type
        return cls(
            devices=(devices,) if isinstance(devices, str) else tuple(devices),
            dtypes=_dtypes(supported.get("dtypes", default_dtypes)),
            head_dims=_lookup(supported.get("head_dims")),
            backward=bool(supported.get("backward", False)),
            dtypes_by_device={d: _dtypes(v) for d, v in (supported.get("dtypes_by_device") or {}).items()},
            head_dims_by_device={d: _lookup(v) for d, v in (supported.get("head_dims_by_device") or {}).items()},
        )

    def dtypes_on(self, device: str) -> tuple[torch.dtype, ...]:
        return self.dtypes_by_device.get(device, self.dtypes)

    def head_dims_on(self, device: str) -> Container | None:
        return self.head_dims_by_device.get(device, self.head_dims)

    def unsupported(self, q, k, v) -> str | None:
        """Why a call with these tensors cannot use the kernel, or None."""
        if q.device.type not in self.devices:
            return f"tensors on {q.device.type}, kernel runs on {'/'.join(self.devices)}"
        dtypes = self.dtypes_on(q.device.type)
        head_dims = self.head_dims_on(q.device.type)
        if q.dtype not in dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
            return f"dtype {q.dtype} not in {', '.join(str(d) for d in dtypes)}"
        d = q.shape[-1]
        if v.shape[-1] != d or (head_dims is not None and d not in head_dims):
            return f"head dim {d}/{v.shape[-1]} not supported"
        if q.shape[1] % k.shape[1] if q.dim() == 4 else False:
            return "query heads not a multiple of key heads"
        if not self.backward and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return "gradients requested and this variant is forward-only"
        return None
