"""The build side of the selftest: the cases a variant is checked with, written into its folder as
``reference.safetensors`` before metadata.json is sealed (so the file is covered by the digest).

Where the cases come from:
- a kernel repo may provide ``tests/selftest_cases.py`` with ``cases() -> list[SelftestCase | dict]`` (dict keys
  as the dataclass fields); the builder imports it from the source tree;
- otherwise a kernel exporting the flash_attn API (``flash_attn_func`` / ``flash_attn_varlen_func`` in
  ``__all__``) gets :func:`attention_cases`: dense, causal with Sq != Sk, sliding window (causal and two-sided),
  GQA, and varlen, each with a float64 reference (:func:`kernel_loader.reference.attention_reference`);
- a kernel with neither gets no file, and ``selftest`` reports that (a refusal under ``load(selftest=True)``).

Inputs are stored in bfloat16 and chosen to be exactly representable in bfloat16 and float16, so the reference
holds whatever dtype a variant runs in.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ..reference import attention_reference
from .cases import CASES_FILE, FORMAT, META_KEY, REFERENCE_FILE, SelftestCase, SelftestError

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
    save_file(tensors, str(path), metadata={META_KEY: json.dumps({"format": FORMAT, "cases": described})})
    return path
