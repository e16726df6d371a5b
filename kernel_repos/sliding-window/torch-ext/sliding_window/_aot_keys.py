"""Configurations of the precompiled (AOT) prefill kernel: the keys the build compiles (aot/spec.py) and the
dispatch asks for (_aot_dispatch.py). Both window edges are always on (an unbounded edge is passed as a window
wider than any sequence) and the GQA group is a run-time argument, so a configuration is head dim x dtype x
softcap. Other head dims run the torch path (bounded to the window the same way).

Ring-cache decode: the head size (a multiple of 16 up to its bucket), the filled length, the GQA group and split /
direct output are run-time arguments, so a configuration is head bucket (64/128/256) x dtype x softcap, plus the
partition merge per bucket x dtype. Other head sizes and float32 run the torch path."""

HEAD_DIMS = (64, 96, 128, 256)
DTYPES = ("fp16", "bf16")


def family(head_dim: int) -> str:
    return "small" if head_dim <= 64 else ("mid" if head_dim <= 128 else "big")


def prefill_key(head_dim: int, dtype: str, softcap: bool) -> str:
    return f"prefill/d{head_dim}/{dtype}/{'softcap' if softcap else 'nocap'}"


def all_keys():
    return [prefill_key(d, t, c) for d in HEAD_DIMS for t in DTYPES for c in (False, True)] + decode_keys()


DECODE_BUCKETS = (64, 128, 256)
DECODE_HEAD_MULTIPLE = 16


def decode_key(bucket: int, dtype: str, softcap: bool) -> str:
    return f"decode/d{bucket}/{dtype}/{'softcap' if softcap else 'nocap'}"


def decode_reduce_key(bucket: int, dtype: str) -> str:
    return f"decode_reduce/d{bucket}/{dtype}"


def decode_keys():
    return ([decode_key(b, t, c) for b in DECODE_BUCKETS for t in DTYPES for c in (False, True)]
            + [decode_reduce_key(b, t) for b in DECODE_BUCKETS for t in DTYPES])
