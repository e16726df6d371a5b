"""The load-time checks the ``kernels`` library makes on a variant's metadata.json, applied before we import it.

Same rules as ``kernels.validate.default_metadata_validators`` (we run kernels' own validators, so the two never
disagree), turned into kernel_loader outcomes:

- ``kernels_minver`` above the installed ``kernels``: refused (``KernelUnavailable``, stage "metadata"), the
  required and installed versions named;
- a ``python-depends`` entry that is not installed, or that the ``kernels`` dependency table does not know:
  refused, the package named with the pip command;
- a build from a dirty git tree (``provenance``): loaded, with one warning per variant saying its recorded
  revision does not identify its sources.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .fallback import KernelUnavailable

_warned: set[str] = set()


class DirtyBuildWarning(UserWarning):
    """The variant was built from a git tree with uncommitted changes."""


def check_variant_metadata(variant_dir: Path, *, label: str, variant: str) -> None:
    """Raise KernelUnavailable when the variant cannot load here; warn once for a dirty build."""
    from kernels._rust import Metadata
    from kernels.validate import DependencyValidator, MinverValidator

    path = Path(variant_dir) / "metadata.json"
    try:
        meta = Metadata.read_from_file(path)
    except Exception as e:  # malformed metadata is the digest/verify step's business; name it anyway
        raise KernelUnavailable(f"{label}: {variant}/metadata.json cannot be read: {e}", stage="metadata") from e
    for validator in (MinverValidator(), DependencyValidator()):
        try:
            validator.validate_metadata(metadata=meta, variant=variant)
        except (RuntimeError, ImportError, ValueError) as e:
            raise KernelUnavailable(f"{label}: {e}", stage="metadata") from e
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


