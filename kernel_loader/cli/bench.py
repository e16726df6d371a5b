"""``kernel-loader bench SPEC``: the model-level benchmark (kernel_loader.bench) for one kernel on this machine.

Bad input never ends without a figure: a spec that does not load, a device that is not there, a shape the kernel
does not take each print one ``problem:`` line and sdpa is still measured (exit status 1; 0 when the kernel ran
everywhere). Imports torch and transformers only when the command runs.
"""

from __future__ import annotations

import json
import sys


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="model-level benchmark of SPEC against sdpa on this machine (A/B alternated)")
    p.add_argument("spec", help="[paged|]ORG/NAME[@REVISION][:FUNCTION], e.g. kernels-community/flash-attn2")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (default), float16 or float32")
    p.add_argument("--model", default="llama-small",
                   help="model shape (random weights): llama-small (default), qwen3-small, llama-1b, tiny")
    p.add_argument("--head-dim", type=int, help="override the model's head dim")
    p.add_argument("--prefill", default="512,2048", help="prompt lengths, comma list (default 512,2048)")
    p.add_argument("--decode", default="1x256,8x256", help="BATCHxCONTEXT list for generate() (default 1x256,8x256)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per decode / request (default 16)")
    p.add_argument("--rounds", type=int, default=5, help="alternated rounds per implementation (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny model, short shapes, 2 rounds (seconds)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def _pairs(text: str, what: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in x.lower().split("x", 1)) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected BATCHxCONTEXT items, e.g. 1x256,8x256") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected a comma list of integers, e.g. 512,2048") from None


def run(args) -> int:
    from ..bench import MODELS, SpecBench, bench_spec

    if args.model not in MODELS:
        raise ValueError(f"--model {args.model!r}: valid are {', '.join(MODELS)}")
    req = SpecBench(spec=args.spec, device=args.device, dtype=args.dtype, model=args.model, head_dim=args.head_dim,
                    prefill=_ints(args.prefill, "prefill"), decode=_pairs(args.decode, "decode"),
                    new_tokens=args.new_tokens, rounds=args.rounds)
    if args.quick:
        req.model, req.prefill, req.decode, req.new_tokens, req.rounds, req.requests = (
            "tiny" if args.model == "llama-small" else args.model, [128], [(1, 64)], 6, 2, 4)
    log = (lambda _line: None) if args.json else print
    if not args.json:
        print(f"kernel-loader bench {args.spec} on {req.device}, {req.dtype}, model {req.model} "
              f"({MODELS[req.model][0]}); {req.rounds} alternated rounds, ratios = sdpa time / ours per round")
    report = bench_spec(req, log=log)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        for p in report["problems"]:
            print(f"problem: {p}", file=sys.stderr)
        m = report["machine"]
        print(f"machine: {m['cpu']}{', ' + m['gpu'] if m.get('gpu') else ''}; load average "
              f"{m['load_average'][0]:.2f} -> {m['load_average_after'][0]:.2f} on {m['cores']} cores")
    return 1 if report["problems"] else 0
