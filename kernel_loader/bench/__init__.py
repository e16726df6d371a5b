"""Model-level benchmark: what a transformers user gets from a Hub kernel against sdpa, in one process.

Method (the only one whose ratios we print): the implementations run alternately, round by round (A B A B ...,
or A B C A B C ... for three), on one model with random weights, so drift in the machine's load hits both sides
alike. Each implementation reports the median and min-max of its rounds; each round gives one ratio (sdpa time /
ours, > 1 = ours faster) and the median of those per-round ratios is the figure. Before timing, one untimed run per
implementation counts the kernel's calls (its torch ops seen by a dispatch mode, plus its Python entry points) and
records the greedy tokens, so a figure always comes with proof the kernel ran and that its output matched sdpa's.

Workloads: prefill (one forward of S tokens, ``logits_to_keep=1``), decode through ``generate()`` (tokens/s of the
steps after the first, timed by a logits processor), continuous batching through ``generate_batch`` (generated
tokens/s over many requests of mixed lengths). ``kernel-loader bench SPEC`` and ``scripts/bench_model.py`` wrap it.
"""

from .calls import KernelCalls, caught_kernel_warnings
from .models import MODELS, SDPA, build_model
from .spec import SpecBench, bench_spec, check_device, kernel_impls
from .timing import Alternated, Stat, alternate, contention, machine, sync
from .workloads import Impl, attention_alone, continuous_batching, decode, prefill

__all__ = ["MODELS", "SDPA", "Alternated", "Impl", "KernelCalls", "SpecBench", "Stat", "alternate",
           "attention_alone", "bench_spec", "build_model", "caught_kernel_warnings", "check_device", "contention",
           "continuous_batching", "decode", "kernel_impls", "machine", "prefill", "sync"]
