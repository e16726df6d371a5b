"""The load side of the selftest: run an imported variant on its ``reference.safetensors`` and compare.

:func:`run_selftest` calls the variant's functions on the stored inputs on its own device and compares within the
tolerance of the dtype it ran in. This catches what no digest or signature can: a build that loads and runs but
computes the wrong thing (a miscompile, a wrong arch path, fast-math drift, a bad constant).

The run dtype is the most precise one the variant supports (``SUPPORTED["dtypes"]`` when the module has it):
float32, else float16, else bfloat16. Tolerances (atol = rtol) are 2e-4 for float32, 2e-3 for float16 and 1e-2 for
bfloat16; an element fails when ``|got - ref| > atol + rtol * |ref|``, and the report gives the worst ratio of
error to allowance. Measured on the CPU flash-attn2 build: a correct kernel uses < 0.01x (float32) and 0.25x
(bfloat16) of the allowance; the same kernel with a softmax scale 1% off uses ~58x (float32) and 1.0-1.24x
(bfloat16, so barely caught: errors smaller than ~1% are not visible in bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KernelUnavailable
from ..importer import folder_device
from .cases import PREFERENCE, REFERENCE_FILE, TOLERANCES, SelftestCase, SelftestError, read_reference

@dataclass
class CaseResult:
    name: str
    function: str
    ok: bool
    max_abs_err: float = float("nan")
    ratio: float = float("inf")  # worst |err| / (atol + rtol |ref|); <= 1 passes
    error: str = ""  # exception text when the call itself failed
    skipped: bool = False  # the kernel raised NotImplementedError: a documented limit, not a wrong result

    def line(self) -> str:
        if self.skipped:
            return f"{self.name} ({self.function}): skipped ({self.error})"
        if self.error:
            return f"{self.name} ({self.function}): {self.error}"
        return f"{self.name} ({self.function}): max abs err {self.max_abs_err:.3g}, {self.ratio:.2f}x tolerance"


@dataclass
class SelftestReport:
    variant: str
    device: str
    dtype: str
    tolerance: float
    results: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every case passed or was skipped, and at least one ran."""
        ran = [r for r in self.results if not r.skipped]
        return bool(ran) and all(r.ok for r in ran)

    @property
    def worst(self) -> CaseResult | None:
        ran = [r for r in self.results if not r.skipped]
        return max(ran, key=lambda r: (bool(r.error), r.ratio), default=None)

    def summary(self) -> str:
        state = "passed" if self.ok else "FAILED"
        ran = [r for r in self.results if not r.skipped]
        skipped = len(self.results) - len(ran)
        head = (f"selftest {state} for {self.variant} on {self.device} in {self.dtype} "
                f"(atol=rtol={self.tolerance:g}): {sum(r.ok for r in ran)}/{len(ran)} cases pass"
                + (f", {skipped} skipped (NotImplementedError)" if skipped else ""))
        return head + (f"; worst: {self.worst.line()}" if self.worst else "; no case ran")


def _run_dtype(module) -> str:
    supported = getattr(module, "SUPPORTED", None)
    dtypes = None
    if isinstance(supported, dict) and supported.get("dtypes"):
        dtypes = {str(d).removeprefix("torch.") for d in supported["dtypes"]}
    for name in PREFERENCE:
        if dtypes is None or name in dtypes:
            return name
    raise SelftestError(f"module supports {sorted(dtypes)}; the selftest runs in one of {list(PREFERENCE)}")


def _compare(got, ref, tol: float) -> tuple[float, float]:
    import torch

    got = got.detach().to("cpu", torch.float64)
    if got.shape != ref.shape:
        raise SelftestError(f"output shape {tuple(got.shape)}, reference {tuple(ref.shape)}")
    if not torch.isfinite(got).all():
        return float("inf"), float("inf")
    err = (got - ref).abs()
    return float(err.max()) if err.numel() else 0.0, float((err / (tol + tol * ref.abs())).max()) if err.numel() else 0.0


def run_cases(module, cases: list[SelftestCase], device: str, dtype: str, variant: str = "") -> SelftestReport:
    import torch

    tol = TOLERANCES[dtype]
    report = SelftestReport(variant=variant, device=device, dtype=dtype, tolerance=tol)
    run_dtype = getattr(torch, dtype)
    for case in cases:
        fn = getattr(module, case.function, None)
        if not callable(fn):
            report.results.append(CaseResult(case.name, case.function, False,
                                             error=f"the module has no function {case.function!r}"))
            continue
        cast = set(case.cast if case.cast is not None else [k for k, t in case.inputs.items() if t.is_floating_point()])
        tensors = {k: t.to(device=device, dtype=run_dtype if k in cast else t.dtype) for k, t in case.inputs.items()}

        def value(a):
            return tensors[a[1:]] if isinstance(a, str) and a.startswith("@") else a

        try:
            with torch.no_grad():
                out = fn(*[value(a) for a in case.args], **{k: value(v) for k, v in case.kwargs.items()})
            outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            if len(outs) < len(case.outputs):
                raise SelftestError(f"returned {len(outs)} outputs, the reference has {len(case.outputs)}")
            worst_abs, worst_ratio = 0.0, 0.0
            for got, ref in zip(outs, case.outputs):
                a, r = _compare(got, ref.to(torch.float64), tol)
                worst_abs, worst_ratio = max(worst_abs, a), max(worst_ratio, r)
            report.results.append(CaseResult(case.name, case.function, worst_ratio <= 1.0, worst_abs, worst_ratio))
        except NotImplementedError as e:
            first = str(e).splitlines()[0] if str(e) else ""
            report.results.append(CaseResult(case.name, case.function, True, error=first, skipped=True))
        except Exception as e:  # a kernel that raises on its own reference inputs fails the test
            first = str(e).splitlines()[0] if str(e) else ""
            report.results.append(CaseResult(case.name, case.function, False, error=f"{type(e).__name__}: {first}"))
    return report


def run_selftest(module, variant_dir: Path, device: str | None = None) -> SelftestReport:
    """Run ``module`` (the imported variant) on ``variant_dir/reference.safetensors`` on ``device`` (default:
    the variant's device type). Raises SelftestError when there is nothing to run."""
    import torch

    variant_dir = Path(variant_dir)
    path = variant_dir / REFERENCE_FILE
    if not path.is_file():
        raise SelftestError(f"variant {variant_dir.name} has no {REFERENCE_FILE} (built without a selftest)")
    if device is None:
        device = folder_device(variant_dir)
    if device == "cuda" and not torch.cuda.is_available():
        raise SelftestError(f"variant {variant_dir.name} runs on cuda, and this machine has no CUDA device")
    return run_cases(module, read_reference(path), device, _run_dtype(module), variant=variant_dir.name)


_passed: dict[str, str] = {}  # variant folder -> summary, so a spec loaded many times is tested once


def check_loaded(module, variant_dir: Path, device: str) -> str:
    """For ``load(selftest=True)``: run the selftest once per variant folder; raise KernelUnavailable
    (stage "selftest") with the worst error when it fails. Returns the summary line."""
    key = str(Path(variant_dir).resolve())
    if key in _passed:
        return _passed[key]
    try:
        report = run_selftest(module, variant_dir, device)
    except SelftestError as e:
        raise KernelUnavailable(f"selftest: {e}", stage="selftest") from None
    if not report.ok:
        raise KernelUnavailable(report.summary(), stage="selftest")
    _passed[key] = report.summary()
    return _passed[key]
