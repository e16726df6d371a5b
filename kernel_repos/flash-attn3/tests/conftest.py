import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

# Triton's interpreter runs the kernels on CPU tensors in CI; it must be on before triton is imported.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def flash_attn3(tmp_path_factory):
    """The package as a noarch build ships it: an `_ops.py` with no library (ops = None) and a unique namespace."""
    ns = "_flash_attn3_test"
    pkg = tmp_path_factory.mktemp("fa3") / ns
    shutil.copytree(ROOT / "torch-ext" / "flash_attn3", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "_ops.py").write_text(f"ops = None\n\n\ndef add_op_namespace_prefix(op_name):\n"
                                 f"    return f\"{ns}::{{op_name}}\"\n")
    spec = importlib.util.spec_from_file_location(ns, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[ns] = module
    spec.loader.exec_module(module)
    return module
