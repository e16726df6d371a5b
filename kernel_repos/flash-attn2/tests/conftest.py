import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_ext  # noqa: E402


@pytest.fixture(scope="session")
def flash_attn2(tmp_path_factory):
    """The package built from this repo's sources (build cache reused across sessions)."""
    cache = Path(os.environ.get("FLASH_ATTN2_TEST_CACHE", Path.home() / ".cache" / "flash_attn2_cpu_test"))
    return cpu_ext.load(cache)
