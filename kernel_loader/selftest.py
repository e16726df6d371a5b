"""A numeric self-test that travels with every variant: ``reference.safetensors``.

At build time :func:`write_reference` stores small fixed inputs and float64 reference outputs for each public
function of the kernel into the variant folder, before metadata.json is sealed, so the file is covered by the
digest. At load time :func:`run_selftest` calls the variant's functions on those inputs on its own device and
compares within the tolerance of the dtype it ran in. This catches what no digest or signature can: a build
that loads and runs but computes the wrong thing (a miscompile, a wrong arch path, fast-math drift, a bad
constant).

Where the cases come from:
- a kernel repo may provide ``tests/selftest_cases.py`` with ``cases() -> list[SelftestCase | dict]`` (dict keys
  as the dataclass fields); the builder imports it from the source tree;
- otherwise a kernel exporting the flash_attn API (``flash_attn_func`` / ``flash_attn_varlen_func`` in
  ``__all__``) gets :func:`attention_cases`: dense, causal with Sq != Sk, sliding window (causal and two-sided),
  GQA, and varlen, each with a float64 reference;
- a kernel with neither gets no file, and ``selftest`` reports that (a refusal under ``load(selftest=True)``).

Inputs are stored in bfloat16 and chosen to be exactly representable in bfloat16 and float16, so the reference
holds whatever dtype a variant runs in. The run dtype is the most precise one the variant supports
(``SUPPORTED["dtypes"]`` when the module has it): float32, else float16, else bfloat16. Tolerances (atol = rtol)
are 2e-4 for float32, 2e-3 for float16 and 1e-2 for bfloat16; an element fails when
``|got - ref| > atol + rtol * |ref|``, and the report gives the worst ratio of error to allowance. Measured on
the CPU flash-attn2 build: a correct kernel uses < 0.01x (float32) and 0.25x (bfloat16) of the allowance;
the same kernel with a softmax scale 1% off uses ~58x (float32) and 1.0-1.24x (bfloat16, so barely caught:
errors smaller than ~1% are not visible in bfloat16).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REFERENCE_FILE = "reference.safetensors"
CASES_FILE = Path("tests") / "selftest_cases.py"
_META_KEY = "kernel-loader-selftest"
_FORMAT = 1
TOLERANCES = {"float32": 2e-4, "float16": 2e-3, "bfloat16": 1e-2}  # atol = rtol
_PREFERENCE = ("float32", "float16", "bfloat16")


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


# ---------------------------------------------------------------------------------------------- references


def attention_reference(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, scale=None):
    """float64 attention with flash_attn semantics. q (B, Sq, Hq, D), k/v (B, Sk, Hk, D); causal aligned
    bottom-right (query i sees keys j <= i + Sk - Sq); rows that see no key give 0."""
    import torch

    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    k = k.repeat_interleave(hq // hk, dim=2)
    v = v.repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    from .adapters import flash_visibility

    s = s.masked_fill(~flash_visibility(sq, sk, causal=causal, window=window), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def _exact_inputs(gen, *shape, scale: float = 1.0):
    """float32 values that bfloat16 and float16 represent exactly (8 significant bits, no fp16 subnormals)."""
    import torch

    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(torch.bfloat16)
    return x.masked_fill(x.abs() < 1e-3, 0.0)  # stored as bfloat16 (half the bytes), exact in every run dtype


def attention_cases(functions: set[str] | None = None) -> list[SelftestCase]:
    """Fixed flash_attn API cases with float64 references (small: the whole set runs in well under a second)."""
    import torch

    gen = torch.Generator().manual_seed(20261101)
    cases: list[SelftestCase] = []
    d = 64

    def dense(name, b, sq, sk, hq, hk, **kw):
        # q scaled up so the softmax is peaked: a wrong scale or mask moves the output visibly.
        q = _exact_inputs(gen, b, sq, hq, d, scale=2.0)
        k = _exact_inputs(gen, b, sk, hk, d)
        v = _exact_inputs(gen, b, sk, hk, d)
        ref = attention_reference(q, k, v, causal=kw.get("causal", False),
                                  window=tuple(kw.get("window_size", (-1, -1))))
        cases.append(SelftestCase(name=name, function="flash_attn_func", inputs={"q": q, "k": k, "v": v},
                                  args=["@q", "@k", "@v"], kwargs=kw, outputs=[ref]))

    dense("dense", 1, 32, 48, 2, 2, causal=False)
    dense("causal", 2, 24, 40, 2, 2, causal=True)  # Sq != Sk: checks the bottom-right alignment
    dense("window_causal", 1, 64, 64, 2, 2, causal=True, window_size=[12, 0])
    dense("window_two_sided", 1, 48, 48, 1, 1, causal=False, window_size=[8, 8])
    dense("gqa", 1, 32, 32, 4, 1, causal=True)

    # varlen: three packed sequences of different lengths, GQA 4/2, causal.
    lens_q, lens_k = [9, 23, 16], [12, 30, 16]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    q = _exact_inputs(gen, int(cu_q[-1]), 4, d, scale=2.0)
    k = _exact_inputs(gen, int(cu_k[-1]), 2, d)
    v = _exact_inputs(gen, int(cu_k[-1]), 2, d)
    ref = torch.cat([
        attention_reference(q[cu_q[i]:cu_q[i + 1]][None], k[cu_k[i]:cu_k[i + 1]][None],
                            v[cu_k[i]:cu_k[i + 1]][None], causal=True)[0]
        for i in range(len(lens_q))
    ])
    cases.append(SelftestCase(
        name="varlen", function="flash_attn_varlen_func",
        inputs={"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k},
        args=["@q", "@k", "@v", "@cu_seqlens_q", "@cu_seqlens_k", max(lens_q), max(lens_k)],
        kwargs={"causal": True}, outputs=[ref]))
    if functions is not None:
        cases = [c for c in cases if c.function in functions]
    return cases


# ---------------------------------------------------------------------------------------------- writing


def package_exports(init_py: Path) -> set[str]:
    return exports_from_source(Path(init_py).read_text(), str(init_py))


def exports_from_source(source: str, filename: str = "__init__.py") -> set[str]:
    """Names a package exports, read without importing it: ``__all__`` if it is a literal list/tuple, else its
    public top-level names (defs, classes, imports, assignments)."""
    tree = ast.parse(source, filename=filename)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return {str(x) for x in ast.literal_eval(node.value)}
            except ValueError:
                break
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


def kernel_cases(kernel_dir: Path) -> list[SelftestCase] | None:
    """The cases a kernel repo defines in tests/selftest_cases.py, or None if it has no such file."""
    path = Path(kernel_dir) / CASES_FILE
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_selftest_cases_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # never leave __pycache__ in the kernel's source tree
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    if not hasattr(module, "cases"):
        raise SelftestError(f"{path}: defines no cases() function")
    out = []
    for i, c in enumerate(module.cases()):
        if isinstance(c, dict):
            try:
                c = SelftestCase(**c)
            except TypeError as e:
                raise SelftestError(f"{path}: case {i}: {e}") from None
        out.append(c)
    return out


def write_reference(variant_dir: Path, kernel_dir: Path) -> Path | None:
    """Write ``variant_dir/reference.safetensors`` (call before the digest is computed). Returns its path, or
    None when the kernel has no cases (no selftest_cases.py and no flash_attn API)."""
    import torch
    from safetensors.torch import save_file

    variant_dir = Path(variant_dir)
    cases = kernel_cases(kernel_dir)
    if cases is None:
        init = variant_dir / "__init__.py"
        exports = package_exports(init) if init.is_file() else set()
        wanted = exports & {"flash_attn_func", "flash_attn_varlen_func"}
        if not wanted:
            return None
        cases = attention_cases(wanted)
    tensors: dict[str, Any] = {}
    described = []
    for case in cases:
        case.check()
        for key, t in case.inputs.items():
            tensors[f"{case.name}/in/{key}"] = t.detach().cpu().contiguous()
        for i, t in enumerate(case.outputs):
            # float32 keeps the float64 reference to ~1e-7 relative, far below any tolerance, at half the size.
            tensors[f"{case.name}/out/{i}"] = t.detach().to(torch.float32).cpu().contiguous()
        described.append({"name": case.name, "function": case.function, "args": case.args, "kwargs": case.kwargs,
                          "inputs": sorted(case.inputs), "outputs": len(case.outputs),
                          "cast": case.cast if case.cast is not None else
                          sorted(k for k, t in case.inputs.items() if t.is_floating_point())})
    if len({c["name"] for c in described}) != len(described):
        raise SelftestError(f"selftest case names repeat: {[c['name'] for c in described]}")
    path = variant_dir / REFERENCE_FILE
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps({"format": _FORMAT, "cases": described})})
    return path


def read_reference(path: Path) -> list[SelftestCase]:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
            if meta is None:
                raise SelftestError(f"{path}: not a kernel_loader selftest file (no {_META_KEY!r} metadata)")
            described = json.loads(meta)
            if described.get("format") != _FORMAT:
                raise SelftestError(f"{path}: selftest format {described.get('format')!r}; this loader reads {_FORMAT}")
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


# ---------------------------------------------------------------------------------------------- running


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
    for name in _PREFERENCE:
        if dtypes is None or name in dtypes:
            return name
    raise SelftestError(f"module supports {sorted(dtypes)}; the selftest runs in one of {list(_PREFERENCE)}")


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
        device = _variant_device(variant_dir)
    if device == "cuda" and not torch.cuda.is_available():
        raise SelftestError(f"variant {variant_dir.name} runs on cuda, and this machine has no CUDA device")
    return run_cases(module, read_reference(path), device, _run_dtype(module), variant=variant_dir.name)


def _variant_device(variant_dir: Path) -> str:
    """torch device type of a variant folder: from its name when it is a variant name, else metadata.json."""
    from .api import device_type

    try:
        return device_type(variant_dir.name)
    except ValueError:
        meta = json.loads((variant_dir / "metadata.json").read_text())
        kind = (meta.get("backend") or {}).get("type", "cpu")
        return {"rocm": "cuda", "metal": "mps"}.get(kind, kind)


_passed: dict[str, str] = {}  # variant folder -> summary, so a spec loaded many times is tested once


def check_loaded(module, variant_dir: Path, device: str) -> str:
    """For ``load(selftest=True)``: run the selftest once per variant folder; raise KernelUnavailable
    (stage "selftest") with the worst error when it fails. Returns the summary line."""
    from .fallback import KernelUnavailable

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


def run_selftest_cli(args) -> int:
    """``kernel-loader selftest SPEC``: 0 passed, 1 failed or unavailable."""
    from .api import device_type, import_variant, load

    local = Path(args.spec)
    if (local / "metadata.json").is_file():
        path, module, device = local, import_variant(local), _variant_device(local)
    else:
        loaded = load(args.spec, version=args.version, strict=True)
        path, module, device = loaded.path, loaded.module, device_type(loaded.variant)
    report = run_selftest(module, path, device)
    if getattr(args, "json", False):
        print(json.dumps({"variant": report.variant, "device": report.device, "dtype": report.dtype,
                          "tolerance": report.tolerance, "ok": report.ok,
                          "cases": [r.__dict__ for r in report.results]}, indent=2))
    else:
        for r in report.results:
            print(f"  {'ok  ' if r.ok else 'FAIL'} {r.line()}")
        print(report.summary())
    return 0 if report.ok else 1
