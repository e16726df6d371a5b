"""A stand-in for the run-time CubinTable that runs each configuration's Triton kernel in Triton's interpreter
(TRITON_INTERPRET=1), for CPU tests of a kernel repo's AOT dispatch.

What a GPU runs is a cubin compiled from the same kernel with one configuration's constexprs (the repo's aot
spec), launched with the arguments the dispatch builds, by name, on the grid of the configuration's rule. This
table replaces only the cubin launch: before running the kernel in the interpreter with exactly those constexprs
and that grid, it checks each argument against what the cubin would assume (pointer dtype, 16-byte alignment,
multiples of 16, int32 range) -- the checks the C++ launcher makes. Tiles may be shrunk (``tiles``) to keep the
interpreter fast; a tile size changes no argument.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

_PTR_DTYPES = {"*fp16": torch.float16, "*bf16": torch.bfloat16, "*fp32": torch.float32, "*i32": torch.int32,
               "*i64": torch.int64, "*u8": torch.uint8}


class InterpreterTable:
    def __init__(self, kernel_dir: Path, package: str, tiles: dict | None = None, arch: str | None = None):
        """``package``: the import name of the kernel package whose (interpreted) Triton modules run."""
        from .compile_cubins import _load_spec
        from .config import load_aot_config

        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        self.kernel_dir = Path(kernel_dir)
        aot = load_aot_config(kernel_dir)
        spec = _load_spec(str(aot.spec), str(Path(importlib.import_module(package).__file__).parent))
        arch = arch or aot.archs[0]
        self.configs = {c["key"]: c for c in spec.configurations(arch, tiles or tomllib.loads(aot.tiles.read_text()))}
        self.package = package
        self.launched: list[str] = []

    def covers(self, device) -> bool:
        return True

    def entry(self, key: str, device):
        return self.configs[key]

    def launch(self, cfg: dict, device_index, args: dict) -> None:
        module, name = cfg["kernel"].split(":")
        fn = getattr(importlib.import_module(f"{self.package}.{module}"), name)
        params = {}
        for n in fn.arg_names:
            ty = cfg["signature"][n]
            if ty == "constexpr":
                continue
            value = args[n]
            where = f"{cfg['key']}: {n}"
            if ty.startswith("*"):
                assert value.dtype == _PTR_DTYPES[ty], f"{where} is {value.dtype}, the cubin takes {ty}"
                assert n not in cfg["divisible"] or value.data_ptr() % 16 == 0, f"{where}: pointer not 16-aligned"
            else:
                assert isinstance(value, (int, float)), f"{where} is a {type(value).__name__}"
                assert n not in cfg["divisible"] or int(value) % 16 == 0, f"{where} = {value}: not a multiple of 16"
                assert ty != "i32" or -2**31 <= int(value) < 2**31, f"{where} = {value} overflows int32"
            params[n] = value
        grid = []
        for names, divisor in cfg["grid"]:
            size = 1
            for a in names:
                size *= int(args[a])
            grid.append(size if divisor is None else -(-size // cfg["constexprs"][divisor]))
        self.launched.append(cfg["key"])
        fn[tuple(grid)](**params, **cfg["constexprs"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def small_tiles(kernels, archs, families=("small", "mid", "big", "all"), block_m=32, block_n=16) -> dict:
    """A tiles table with one small interpreter-friendly tile everywhere."""
    tile = {"block_m": block_m, "block_n": block_n, "num_warps": 4, "num_stages": 1}
    return {k: {a: {f: dict(tile) for f in families} for a in archs} for k in kernels}
