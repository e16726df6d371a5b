"""Window arithmetic shared by both paths (flash-attn conventions: bottom-right alignment, (left, right))."""

from __future__ import annotations


def normalize_window(window_size, causal: bool) -> tuple[int, int]:
    """``window_size``: an int W (each query sees W keys ending at itself: left W-1, right 0 when causal, W-1
    otherwise; transformers' ``sliding_window``) or a flash-attn (left, right) pair, -1 = unbounded.
    Causal caps right at 0."""
    if isinstance(window_size, bool):
        raise TypeError("window_size must be an int or a (left, right) pair, got a bool")
    if isinstance(window_size, int):
        if window_size < 1:
            raise ValueError(f"window_size {window_size} must be >= 1 (or a (left, right) pair with -1 = unbounded)")
        left, right = window_size - 1, (0 if causal else window_size - 1)
    else:
        try:
            left, right = (int(x) for x in window_size)
        except (TypeError, ValueError):
            raise ValueError(f"window_size must be an int or a (left, right) pair, got {window_size!r}") from None
        if left < -1 or right < -1:
            raise ValueError(f"window_size {window_size!r}: entries must be >= -1 (-1 = unbounded)")
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def key_range(q_start: int, q_end: int, offset: int, sk: int, left: int, right: int) -> tuple[int, int]:
    """Keys [lo, hi) any query row in [q_start, q_end) may see; rows sit at key position row + offset."""
    lo = 0 if left < 0 else max(0, q_start + offset - left)
    hi = sk if right < 0 else min(sk, q_end - 1 + offset + right + 1)
    return lo, max(lo, hi)
