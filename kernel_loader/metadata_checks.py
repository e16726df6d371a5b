"""The load-time checks the ``kernels`` library makes on a variant's metadata.json, applied before we import it.

Same rules as ``kernels.validate.default_metadata_validators`` (we run kernels' own validators, so the two never
disagree), turned into kernel_loader outcomes:

- ``kernels_minver`` above the installed ``kernels``: refused (``KernelUnavailable``, stage "import": checked before the import), the
  required and installed versions named;
- a ``python-depends`` entry that is not installed: refused, the package named with the pip command. Entries in
  kernels' dependency table are checked by its validator (package and import names from the table); an entry the
  table does not know (stock kernels 0.17.2 refuses those outright) is checked by importing it under its own name,
  so a kernel that declares e.g. ``numpy`` loads where numpy is installed;
- a build from a dirty git tree (``provenance``): loaded, with one warning per variant saying its recorded
  revision does not identify its sources.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from . import _kernels
from .errors import KernelUnavailable

_warned: set[str] = set()


class DirtyBuildWarning(UserWarning):
    """The variant was built from a git tree with uncommitted changes."""


def _split_by_table(depends: list[str]) -> tuple[list[str], list[str]]:
    """(entries kernels' dependency table knows for this backend, the others)."""
    data = _kernels.dependency_data
    table = set(data.general) | set(data.backends.get(_kernels.backend().name, {}))
    return [d for d in depends if d in table], [d for d in depends if d not in table]


def check_variant_metadata(variant_dir: Path, *, label: str, variant: str) -> None:
    """Raise KernelUnavailable when the variant cannot load here; warn once for a dirty build."""
    from kernels.python_deps import validate_dependencies
    from kernels.validate import MinverValidator

    path = Path(variant_dir) / "metadata.json"
    try:
        meta = _kernels.Metadata.read_from_file(path)
    except Exception as e:  # malformed metadata is the digest/verify step's business; name it anyway
        raise KernelUnavailable(f"{label}: {variant}/metadata.json cannot be read: {e}", stage="import") from e
    try:
        MinverValidator().validate_metadata(metadata=meta, variant=variant)
        known, unknown = _split_by_table(meta.python_depends)
        validate_dependencies(meta.name.python_name, known, _kernels.backend())
    except (RuntimeError, ImportError, ValueError) as e:
        raise KernelUnavailable(f"{label}: {e}", stage="import") from e
    for dep in unknown:
        if importlib.util.find_spec(dep.replace("-", "_")) is None:
            raise KernelUnavailable(f"{label}: variant {variant} requires Python package `{dep}`: pip install {dep}",
                                    stage="import")
    provenance = meta.provenance
    if provenance is not None and provenance.dirty:
        key = f"{label}:{variant}:{path.resolve()}"
        if key not in _warned:
            _warned.add(key)
            parts = []
            if provenance.kernel is not None and provenance.kernel.dirty:
                parts.append(f"kernel source at {provenance.kernel.commit[:12]}")
            git = provenance.kernel_builder.git
            if git is not None and git.dirty:
                parts.append("kernel-builder")
            warnings.warn(f"kernel_loader: {label} variant {variant} was built from a dirty git tree "
                          f"({', '.join(parts) or 'uncommitted changes'}): its recorded revision does not identify "
                          "the sources it was built from", DirtyBuildWarning, stacklevel=4)


