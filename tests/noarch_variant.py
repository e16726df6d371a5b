"""Package-only (noarch) variants of the Python/Triton kernel repos for tests: copy ``torch-ext/<pkg>/`` into
``<out>/build/torch-<backend>/`` with a kernels-format metadata.json (sha256 digest of every file). Stands in for the
builder's noarch support until tests switch to it; the layout and metadata are the same."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path


def build_noarch(kernel_dir: Path, out_dir: Path, backend: str = "cpu") -> Path:
    from kernels._rust import Digest, DigestAlgorithm, Metadata

    general = tomllib.loads((kernel_dir / "build.toml").read_text())["general"]
    name = general["name"]
    pkg = kernel_dir / "torch-ext" / name.replace("-", "_")
    files = sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(pkg).as_posix().encode())
        h.update(p.read_bytes())
    dest = out_dir / "build" / f"torch-{backend}"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in files:
        target = dest / p.relative_to(pkg)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    meta = {"name": name, "id": f"_{name.replace('-', '_')}_{backend}_{h.hexdigest()[:10]}",
            "version": general["version"], "license": general["license"], "backend": {"type": backend},
            "python-depends": general.get("python-depends", [])}
    digest = Digest.hash_variant(DigestAlgorithm.SHA256, dest)
    meta["digest"] = {"algorithm": "sha256", "files": dict(sorted(digest.files.items()))}
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    Metadata.read_from_file(dest / "metadata.json").digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, dest))
    return dest
