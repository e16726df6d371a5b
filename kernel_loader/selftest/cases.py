"""What a selftest case is and how ``reference.safetensors`` stores it; shared by the build side
(:mod:`.write`) and the load side (:mod:`.check`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE_FILE = "reference.safetensors"
CASES_FILE = Path("tests") / "selftest_cases.py"
META_KEY = "kernel-loader-selftest"
FORMAT = 1
TOLERANCES = {"float32": 2e-4, "float16": 2e-3, "bfloat16": 1e-2}  # atol = rtol
PREFERENCE = ("float32", "float16", "bfloat16")


class SelftestError(ValueError):
    """A selftest file or case definition is malformed (names the case and field)."""


@dataclass
class SelftestCase:
    """One call: ``function(*args, **kwargs)`` compared with ``outputs``.

    ``args``/``kwargs`` values that are strings starting with ``@`` name a tensor in ``inputs``; everything else
    is passed as is (JSON values). ``outputs`` are the float64 references of the returned tensor, or of the
    first ``len(outputs)`` elements of a returned tuple. ``cast`` lists the inputs converted to the run dtype
    (default: every floating-point input); integer inputs (e.g. cu_seqlens) keep their dtype.
    """

    name: str
    function: str
    inputs: dict
    outputs: list
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    cast: list | None = None

    def check(self) -> None:
        import torch

        if not self.name or "/" in self.name:
            raise SelftestError(f"selftest case name {self.name!r} must be non-empty and without '/'")
        for key, value in self.inputs.items():
            if not isinstance(value, torch.Tensor):
                raise SelftestError(f"selftest case {self.name!r}: inputs[{key!r}] is {type(value).__name__}, "
                                    "not a tensor")
        refs = [a for a in [*self.args, *self.kwargs.values()] if isinstance(a, str) and a.startswith("@")]
        missing = [r for r in refs if r[1:] not in self.inputs]
        if missing:
            raise SelftestError(f"selftest case {self.name!r}: {missing} name no tensor in inputs "
                                f"{sorted(self.inputs)}")
        if not self.outputs or not all(isinstance(o, torch.Tensor) for o in self.outputs):
            raise SelftestError(f"selftest case {self.name!r}: outputs must be a non-empty list of tensors")


def read_reference(path: Path) -> list[SelftestCase]:
    """The cases stored in a ``reference.safetensors`` (SelftestError naming the file when it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(META_KEY)
            if meta is None:
                raise SelftestError(f"{path}: not a kernel_loader selftest file (no {META_KEY!r} metadata)")
            described = json.loads(meta)
            if described.get("format") != FORMAT:
                raise SelftestError(f"{path}: selftest format {described.get('format')!r}; this loader reads {FORMAT}")
            cases = []
            for c in described["cases"]:
                cases.append(SelftestCase(
                    name=c["name"], function=c["function"], args=c["args"], kwargs=c["kwargs"], cast=c["cast"],
                    inputs={k: f.get_tensor(f"{c['name']}/in/{k}") for k in c["inputs"]},
                    outputs=[f.get_tensor(f"{c['name']}/out/{i}") for i in range(c["outputs"])]))
    except (OSError, KeyError, ValueError) as e:
        if isinstance(e, SelftestError):
            raise
        raise SelftestError(f"{path}: unreadable selftest file: {type(e).__name__}: {e}") from None
    return cases
