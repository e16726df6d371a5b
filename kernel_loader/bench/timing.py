"""Alternated A/B timing (medians, min-max, per-round ratios) and what the machine was doing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .models import SDPA

# ------------------------------------------------------------------------------------------------ timing

@dataclass
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, xs):
        return cls(statistics.median(xs), min(xs), max(xs))


@dataclass
class Alternated:
    """Seconds per round for each implementation, measured alternately; ratios are baseline / impl per round."""
    order: list[str]
    seconds: dict[str, list[float]]
    work: float  # tokens per run (to turn seconds into tokens/s)

    def tokens_per_s(self, impl: str) -> Stat:
        xs = [self.work / s for s in self.seconds[impl]]
        return Stat.of(xs)

    def ratios(self, impl: str, baseline: str = SDPA) -> list[float]:
        return [b / a for a, b in zip(self.seconds[impl], self.seconds[baseline])]

    def summary(self, baseline: str = SDPA) -> dict:
        out = {"rounds": len(self.seconds[self.order[0]]), "order": self.order}
        for impl in self.order:
            out[impl] = {"tokens_per_s": asdict(self.tokens_per_s(impl)),
                         "seconds": [round(s, 6) for s in self.seconds[impl]]}
            if impl != baseline and baseline in self.seconds:
                r = self.ratios(impl, baseline)
                out[impl]["ratio_vs_" + baseline] = asdict(Stat.of(r))
                out[impl]["ratio_per_round"] = [round(x, 4) for x in r]
        return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(runs: dict[str, Callable[[], float | None]], rounds: int, *, warmup: int = 1, device: str = "cpu",
              work: float = 1.0, prepare: Callable[[str], None] | None = None) -> Alternated:
    """Run each callable once per round, in order, ``rounds`` times (after ``warmup`` untimed rounds).
    ``prepare(name)`` runs untimed before each call (switching the model's implementation). A callable may return
    its own measured seconds (e.g. decode steps only); otherwise its wall time is used."""
    seconds = {k: [] for k in runs}
    for r in range(warmup + rounds):
        for name, fn in runs.items():
            if prepare is not None:
                prepare(name)
            sync(device)
            t = time.perf_counter()
            own = fn()
            sync(device)
            if r >= warmup:
                seconds[name].append(own if own is not None else time.perf_counter() - t)
    return Alternated(order=list(runs), seconds=seconds, work=work)

# ------------------------------------------------------------------------------------------------ machine

def machine() -> dict:
    """What the figures were measured on, including how busy the machine was."""
    info = {"host": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    info["load_average"] = list(os.getloadavg())
    return info


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def contention(before: list[float], after: list[float], cores: int | None) -> str:
    """One line on how contended the run was: load averages (1 min) around it against the core count."""
    cores = cores or 1
    peak = max(before[0], after[0])
    word = "quiet" if peak < 0.5 * cores else ("busy" if peak < 1.5 * cores else "heavily contended")
    return (f"load average {before[0]:.2f} -> {after[0]:.2f} (1 min) on {cores} cores: {word}; "
            f"A/B alternation spreads it over both sides")
