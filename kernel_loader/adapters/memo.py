"""Answers about a tensor that every layer of one forward passes again (the padding mask, the position ids),
remembered for the rest of that forward: finding them out reads the tensor back, a device sync per layer on a GPU."""

from __future__ import annotations

import weakref
from typing import Callable

import torch


class ForwardMemo:
    """One remembered answer, for the same tensor object while it is unmodified. A normal tensor's version counter
    tells an in-place change; an inference tensor (``torch.inference_mode``) has none, so there the answer holds
    only while the layer index grows -- within one forward -- and is recomputed at the next forward's first layer
    (a buffer refilled in place between forwards is read again)."""

    def __init__(self):
        self._ref = None
        self._version = None
        self._layer = None
        self._value = None

    def get(self, t: torch.Tensor, layer: int | None, compute: Callable[[torch.Tensor], object]):
        inference = t.is_inference()
        version = None if inference else t._version
        same = self._ref is not None and self._ref() is t
        if inference:
            hit = same and layer is not None and self._layer is not None and layer > self._layer
        else:
            hit = same and version == self._version
        if not hit:
            self._value = compute(t)
        self._ref, self._version, self._layer = weakref.ref(t), version, layer
        return self._value
