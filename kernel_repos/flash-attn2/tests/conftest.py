import os
import sys
from pathlib import Path

import pytest

# The Triton kernels run on CPU tensors through Triton's interpreter in CI (no GPU); it must be on before triton
# is imported (the repo's tests/conftest.py sets it first when run from the root; this covers running this folder).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_ext  # noqa: E402


@pytest.fixture(scope="session")
def flash_attn2(tmp_path_factory):
    """The package built from this repo's sources (build cache reused across sessions)."""
    cache = Path(os.environ.get("FLASH_ATTN2_TEST_CACHE", Path.home() / ".cache" / "flash_attn2_cpu_test"))
    return cpu_ext.load(cache)
