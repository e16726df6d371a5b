"""Run-time side of ahead-of-time compiled Triton kernels; the builder copies this file into every AOT variant
as ``_aot_runtime.py``. It imports torch and the variant's own ops, never Triton.

The variant holds ``cubins/table.json`` (one entry per (arch, configuration): kernel name, warps, shared memory,
parameter tokens, grid rule, constexprs) and ``cubins/images.bin`` (the zlib-compressed cubins, back to back).
:class:`CubinTable` picks the entry for a device's compute capability, loads its cubin into that device once
(the launcher's ``load`` op: cuModuleLoadData) and launches it (``launch`` op: cuLaunchKernel on torch's current
stream). Launch arguments are given by parameter name; the grid comes from the entry's rule. An entry with
``global_scratch`` (kernels that build TMA descriptors on the device) has the launcher allocate that many bytes
per program from torch's caching allocator at each launch (stream-ordered, so CUDA-graph capturable).
"""

from __future__ import annotations

import json
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

TABLE_DIR = "cubins"
TABLE_FILE = "table.json"
IMAGES_FILE = "images.bin"
FORMAT = 1


class NoCubin(RuntimeError):
    """No precompiled kernel for this GPU or configuration; the message names what is missing and what exists."""


@dataclass(frozen=True)
class Entry:
    key: str  # the configuration, e.g. "fwd/dense/d128/bf16/nocap"
    arch: str  # the arch the cubin was compiled for, "9.0"
    name: str  # kernel symbol in the cubin
    num_warps: int
    shared: int  # bytes of shared memory per block
    params: tuple  # ((name, token), ...) in launch order; token as the launcher parses it
    grid: tuple  # per grid dim: ([int arg names multiplied], constexpr divisor or None)
    constexprs: dict
    offset: int
    size: int
    global_scratch: tuple = (0, 1)  # (bytes per program, alignment) the launcher allocates; 0: none

    def __post_init__(self):
        tensors = tuple(n for n, t in self.params if t.startswith("*"))
        floats = tuple(n for n, t in self.params if t == "fp32")
        ints = tuple(n for n, t in self.params if not t.startswith("*") and t != "fp32")
        object.__setattr__(self, "_names", (tensors, ints, floats))

    @property
    def launcher_params(self) -> str:
        """The parameter list as the launcher's load op parses it: one token per kernel parameter, then
        ``global_scratch=<bytes>/<alignment>`` when the kernel needs global scratch."""
        tokens = [t for _, t in self.params]
        size, align = self.global_scratch
        if size:
            tokens.append(f"global_scratch={int(size)}/{int(align)}")
        return ",".join(tokens)

    def grid_of(self, args: dict) -> tuple[int, int, int]:
        dims = []
        for names, divisor in self.grid:
            n = 1
            for a in names:
                n *= int(args[a])
            if divisor is not None:
                d = int(self.constexprs[divisor])
                n = (n + d - 1) // d
            dims.append(n)
        while len(dims) < 3:
            dims.append(1)
        return dims[0], dims[1], dims[2]


class CubinTable:
    """The cubins of one variant folder, loaded lazily per (entry, device)."""

    def __init__(self, package_dir: Path, ops):
        root = Path(package_dir) / TABLE_DIR
        data = json.loads((root / TABLE_FILE).read_text())
        if data.get("format") != FORMAT:
            raise RuntimeError(f"{root / TABLE_FILE}: table format {data.get('format')!r}, this runtime reads {FORMAT}")
        self.ops = ops
        self.images_path = root / IMAGES_FILE
        self.archs = {a: tuple(runs_on) for a, runs_on in data["archs"].items()}  # built arch -> capabilities
        self.driver_min = int(data.get("driver_min", 0))  # cuDriverGetVersion the cubins need
        self.triton = data.get("triton")
        self.entries: dict[tuple[str, str], Entry] = {}
        for e in data["entries"]:
            entry = Entry(key=e["key"], arch=e["arch"], name=e["name"], num_warps=e["num_warps"], shared=e["shared"],
                          params=tuple((n, t) for n, t in e["params"]), grid=tuple((tuple(g[0]), g[1]) for g in e["grid"]),
                          constexprs=e["constexprs"], offset=e["offset"], size=e["size"],
                          global_scratch=tuple(e.get("global_scratch", (0, 1))))
            self.entries[(entry.arch, entry.key)] = entry
        self._handles: dict[tuple[int, int], int] = {}
        self._arch_of_device: dict[int, str | None] = {}
        self._lock = threading.Lock()
        self._driver_checked = False

    # ------------------------------------------------------------------ selection
    def arch_for(self, device: torch.device) -> str | None:
        """The built arch whose cubins run on ``device`` (None: none do)."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._arch_of_device:
            major, minor = torch.cuda.get_device_capability(index)
            cap = f"{major}.{minor}"
            self._arch_of_device[index] = next((a for a, runs_on in self.archs.items() if cap in runs_on), None)
        return self._arch_of_device[index]

    def covers(self, device: torch.device) -> bool:
        return self.arch_for(device) is not None

    def entry(self, key: str, device: torch.device) -> Entry:
        arch = self.arch_for(device)
        if arch is None:
            major, minor = torch.cuda.get_device_capability(device)
            have = ", ".join(f"sm_{a.replace('.', '')} (runs on {', '.join(r)})" for a, r in self.archs.items())
            raise NoCubin(f"no precompiled kernels for this GPU (compute capability {major}.{minor}); this build "
                          f"has {have}")
        found = self.entries.get((arch, key))
        if found is None:
            raise NoCubin(f"no precompiled kernel for configuration {key} on sm_{arch.replace('.', '')}")
        return found

    # ------------------------------------------------------------------ loading and launching
    def _check_driver(self):
        version = int(self.ops.driver_version(torch.empty(0, dtype=torch.uint8)))
        if version < self.driver_min:
            raise NoCubin(f"the CUDA driver supports CUDA {version // 1000}.{version % 1000 // 10}; these cubins "
                          f"need a driver for CUDA {self.driver_min // 1000}.{self.driver_min % 1000 // 10} or newer")
        self._driver_checked = True

    def handle(self, entry: Entry, device_index: int) -> int:
        key = (id(entry), device_index)
        h = self._handles.get(key)
        if h is not None:
            return h
        with self._lock:
            h = self._handles.get(key)
            if h is None:
                if not self._driver_checked:
                    self._check_driver()
                with open(self.images_path, "rb") as f:
                    f.seek(entry.offset)
                    image = zlib.decompress(f.read(entry.size))
                tensor = torch.frombuffer(bytearray(image), dtype=torch.uint8)
                h = int(self.ops.load(tensor, entry.name, entry.launcher_params, entry.num_warps, entry.shared,
                                      device_index))
                self._handles[key] = h
        return h

    def launch(self, entry: Entry, device_index: int, args: dict) -> None:
        """Launch ``entry`` on the current stream with ``args`` (parameter name -> tensor / int / float)."""
        h = self.handle(entry, device_index)
        tensors, ints, floats = entry._names
        gx, gy, gz = entry.grid_of(args)
        self.ops.launch(h, gx, gy, gz, [args[n] for n in tensors], [int(args[n]) for n in ints],
                        [float(args[n]) for n in floats])


_tables: dict[str, CubinTable] = {}


def table(package_dir, ops) -> CubinTable | None:
    """The variant's cubin table (None when the folder has none: a Triton or CPU variant)."""
    package_dir = Path(package_dir)
    key = str(package_dir)
    if key not in _tables:
        if not (package_dir / TABLE_DIR / TABLE_FILE).is_file():
            return None
        _tables[key] = CubinTable(package_dir, ops)
    return _tables[key]
