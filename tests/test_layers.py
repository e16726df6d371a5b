"""The package's imports only go down its layers, and none goes round in a circle.

Every ``import`` of a kernel_loader module counts, the ones inside functions included, and so do the names
``kernel_loader/__init__.py`` re-exports lazily (its ``_EXPORTS`` table). Importing ``a.b`` from outside ``a``
also runs the package ``a``, so that counts as importing ``a`` too.

LAYERS is the one table of the order. A new module gets its layer by adding its name to a line below; the test
fails for a module that is in no line, saying so.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kernel_loader"

# Bottom to top. A module may import modules of its own layer and of the layers below it. Names are relative to
# kernel_loader; "pkg.*" means every module inside pkg.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("L0 bottom", ("_version", "errors", "env", "_kernels", "spec", "variants", "reference", "cache", "hub_client",
                   "hubio", "system", "offline_mode")),
    ("L1 checks and cache state", ("integrity", "containment", "cachestate", "trust", "lockfile", "selftest",
                                   "selftest.cases", "metadata_checks")),
    ("L2 resolve, fetch, import", ("hubrepo", "resolve", "fetch", "importer")),
    ("L3 pipeline", ("pipeline",)),
    ("L4 load and its users", ("fallback", "adapters", "adapters.*", "selftest.check", "api", "lock", "bundle",
                               "distributed")),
    ("L5 registration", ("registry", "integrations", "integrations.*")),
    ("L6 measurement", ("bench", "bench.*")),  # model-level A/B benchmark; uses load and the transformers hook
    ("public re-exports", ("",)),  # kernel_loader/__init__.py
    ("cli", ("cli", "cli.*")),
]
# Authoring (building, publishing, CI matrices, writing selftest references, the local Hub server): may import
# each other and layers up to AUTHORING_MAY_IMPORT; nothing in LAYERS but the cli may import them.
AUTHORING: tuple[str, ...] = ("build", "build.*", "publish", "publish.*", "matrix", "matrix.*", "selftest.write",
                              "hub", "hubfront")
AUTHORING_MAY_IMPORT = "L2 resolve, fetch, import"
ADD_A_LINE = "add it to a line of LAYERS (or to AUTHORING) in tests/test_layers.py"


def module_names(root: Path) -> dict[str, Path]:
    """'api', 'adapters.flash', '' (the package itself) -> file."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = (["kernel_loader"] + ([p for p in module.split(".") if p]))
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, names: dict[str, Path]) -> set[str]:
    """kernel_loader modules ``module`` imports anywhere in its file (relative names, '' = the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def add(dotted: str) -> None:
        if dotted != "kernel_loader" and not dotted.startswith("kernel_loader."):
            return
        rel = dotted[len("kernel_loader."):] if dotted != "kernel_loader" else ""
        while rel and rel not in names:
            rel = rel.rpartition(".")[0]
        parts = rel.split(".") if rel else []
        for i in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first (unless we are inside a)
            prefix = ".".join(parts[:i])
            if i == len(parts) or not (module == prefix or module.startswith(prefix + ".")):
                found.add(prefix)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}"[len("kernel_loader."):] in names else base)
        elif (module == "" and isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)):
            for value in ast.literal_eval(node.value).values():
                add(value)
    found.discard(module)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    names = module_names(root)
    return {m: imports_of(m, p, names) for m, p in names.items()}


def _matches(module: str, pattern: str) -> bool:
    return module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1]))


def layer_of(module: str) -> int | None:
    """Index into LAYERS, -1 for authoring, None when the module is in no line."""
    for i, (_, patterns) in enumerate(LAYERS):
        if any(_matches(module, p) for p in patterns):
            return i
    if any(_matches(module, p) for p in AUTHORING):
        return -1
    return None


def _label(module: str) -> str:
    return f"kernel_loader.{module}" if module else "kernel_loader"


def layer_problems(graph: dict[str, set[str]]) -> list[str]:
    names = [n for n, _ in LAYERS]
    authoring_limit = names.index(AUTHORING_MAY_IMPORT)
    cli = names.index("cli")
    problems = []
    for module in sorted(graph):
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{_label(module)} is in no layer: {ADD_A_LINE}")
            continue
        for dep in sorted(graph[module]):
            theirs = layer_of(dep)
            if theirs is None:
                continue  # reported as its own module
            if mine == -1:
                ok = theirs == -1 or theirs <= authoring_limit
                rule = f"authoring code may import authoring code and layers up to {AUTHORING_MAY_IMPORT!r}"
            elif theirs == -1:
                ok = mine == cli
                rule = "only the cli may import authoring code (build/, publish/, matrix/, hub, selftest.write)"
            else:
                ok = theirs <= mine
                rule = f"{names[mine]!r} may not import the higher layer {names[theirs]!r}"
            if not ok:
                problems.append(f"{_label(module)} imports {_label(dep)}: {rule}")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(_label(m) for m in group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# A planted violation is a real line added to a copy of the package, parsed like the real one.
PLANTS = {
    "tree as it is": None,
    "planted: spec imports api inside a function": (
        "spec.py", "\n\ndef _planted():\n    from .api import load\n\n    return load\n",
        "kernel_loader.spec imports kernel_loader.api"),
    "planted: resolve imports the builder": (
        "resolve.py", "\n\ndef _planted():\n    from .build import config\n\n    return config\n",
        "only the cli may import authoring code"),
    "planted: a module in no layer": (
        "brand_new.py", "", "kernel_loader.brand_new is in no layer: " + ADD_A_LINE),
}


@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_imports_only_go_down(plant, tmp_path):
    root = PACKAGE
    if plant is not None:
        root = tmp_path / "kernel_loader"
        shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
        file, line, _ = plant
        with open(root / file, "a") as f:
            f.write(line)
    problems = layer_problems(import_graph(root))
    if plant is None:
        assert problems == [], "\n".join(problems)
    else:
        assert any(plant[2] in p for p in problems), problems


@pytest.mark.parametrize("planted", [False, True], ids=["tree as it is", "planted: trust imports pipeline"])
def test_no_import_circles(planted, tmp_path):
    root = PACKAGE
    if planted:  # pipeline imports trust; trust importing pipeline closes a circle (and is upward too)
        root = tmp_path / "kernel_loader"
        shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
        with open(root / "trust.py", "a") as f:
            f.write("\n\ndef _planted():\n    from . import pipeline\n\n    return pipeline\n")
    found = circles(import_graph(root))
    if planted:
        assert any("kernel_loader.trust" in g and "kernel_loader.pipeline" in g for g in found), found
    else:
        assert found == []


def test_every_module_is_in_the_table_and_at_most_400_lines():
    names = module_names(PACKAGE)
    missing = [_label(m) for m in names if layer_of(m) is None]
    assert not missing, f"{missing}: {ADD_A_LINE}"
    long = {_label(m): n for m, p in names.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


def test_only_the_cli_prints():
    printers = []
    for module, path in module_names(PACKAGE).items():
        if _matches(module, "cli") or _matches(module, "cli.*"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printers.append(f"{_label(module)}:{node.lineno}")
    assert printers == [], f"print() outside kernel_loader/cli/: {printers}"
