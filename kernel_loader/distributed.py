"""Loading a kernel in a ``torch.distributed`` job: one download per node, every rank loads the same files.

:func:`load_on_local_rank0` lets local rank 0 of each node resolve and fetch (online), while the node's other ranks
wait on a barrier and then load offline from the cache rank 0 just filled, so a 1,000-rank job asks the Hub once
per node instead of once per rank. Without an initialised process group it is plain :func:`kernel_loader.load`
(the per-repo file lock in the cache still makes concurrent processes download each file once).

The barrier is collective: every rank of the group must call this function, in the same order, like any other
collective. If rank 0 falls back (say the Hub is down and the cache is cold), the others fall back too, with the
offline reason.
"""

from __future__ import annotations

import os


def local_rank() -> int:
    """LOCAL_RANK (torchrun, accelerate, SLURM wrappers) or, failing that, rank modulo LOCAL_WORLD_SIZE."""
    import torch.distributed as dist

    for name in ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        raw = os.environ.get(name)
        if raw is not None and raw.strip() != "":
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer local rank") from None
    rank = dist.get_rank()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or dist.get_world_size())
    return rank % per_node


def load_on_local_rank0(spec, *, group=None, **kwargs):
    """:func:`kernel_loader.load` with one fetch per node; returns the :class:`LoadedKernel` on every rank.

    ``group`` is the process group to synchronise (default: the world); ``kwargs`` go to ``load``."""
    import torch.distributed as dist

    from .api import load
    from .offline_mode import offline

    if not (dist.is_available() and dist.is_initialized()):
        return load(spec, **kwargs)
    if local_rank() == 0:
        try:
            return load(spec, **kwargs)
        finally:  # release the others even when load raises (strict mode), so no rank hangs
            dist.barrier(group=group)
    dist.barrier(group=group)
    with offline():
        return load(spec, **kwargs)
