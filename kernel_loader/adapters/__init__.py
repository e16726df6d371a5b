"""Kernel module -> the two call signatures users have (transformers' AttentionInterface and
``torch.nn.functional.scaled_dot_product_attention``).

- :mod:`.capabilities`: what a module says it can take (its ``SUPPORTED`` dict, typed), used by every adapter;
- :mod:`.flash`: flash-attn style modules (``flash_attn_func`` / ``flash_attn_varlen_func``);
- :mod:`.paged`: paged-attention modules under transformers' continuous batching;
- :mod:`.sdpa`: the SDPA floor with flash-attn semantics; :mod:`.notes`: one warning per fallback reason.
"""

from .capabilities import Capabilities
from .flash import FlashKernel, adapt
from .notes import forget_warnings
from .paged import PAGED_API, adapt_paged, block_tables_from_slots, is_paged_module
from .sdpa import masked_attention, sdpa_attention, torch_sdpa

__all__ = ["PAGED_API", "Capabilities", "FlashKernel", "adapt", "adapt_paged", "block_tables_from_slots",
           "forget_warnings", "is_paged_module", "masked_attention", "sdpa_attention", "torch_sdpa"]
