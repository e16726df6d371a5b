"""Index validation on the device (mode "device"): the decode kernel checks block-table entries and seq_lens itself,
never reads outside the cache (bad block ids become block 0, lengths are clamped), writes NaN to the output of an
offending sequence, and the first offender's details land in a small report buffer. Nothing is read back per call
(no host sync): the report is looked at by the next decode call on that device, which raises ``ValueError`` naming
the bad entry, or at once by :func:`check_errors` (which synchronizes).

The report lives in pinned host memory that the kernel writes directly (mapped into the device's address space under
unified addressing), so a clean call costs no extra launch or copy. Where Triton refuses a host pointer, the report
stays on the device and a 32-byte non-blocking copy into pinned memory follows each launch instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._validate import fail

# report layout (int32): [kind, seq, a, b, num_blocks]; kind 1: block_tables[seq, a] = b out of range,
# kind 2: seq_lens[seq] = a outside 0..b (b = what the block table and max_seq_len cover); kind 3: slot_mapping[seq]
# = a past the cache's b slots (a cache write)
REPORT_LEN = 8


@dataclass
class DeviceCheckState:
    device: torch.device
    word: torch.Tensor  # int32 [1] on the device: 0 until a program claims the report (atomic compare-and-swap)
    report: torch.Tensor  # int32 [REPORT_LEN], written by the kernel: pinned host memory, or device memory (fallback)
    host: torch.Tensor  # int32 [REPORT_LEN] host view read by the lazy check (== report when pinned)
    copy_after_launch: bool = False
    errors_seen: int = field(default=0)
    cuda_report: torch.Tensor | None = None  # a CUDA tensor over the pinned report, for device-tensor-only launchers

    def __post_init__(self):
        self._flag = self.host.numpy()  # numpy view: reading one int costs ~0.1 us, a torch index ~2 us

    def after_launch(self) -> None:
        if self.copy_after_launch:
            self.host.copy_(self.report, non_blocking=True)

    def use_device_report(self) -> None:
        """Fallback when a kernel may not write host memory: report on the device, copied back after each launch."""
        self.report = torch.zeros(REPORT_LEN, dtype=torch.int32, device=self.device)
        self.copy_after_launch = True
        self.cuda_report = None

    def kernel_report(self) -> torch.Tensor:
        """The report buffer as a precompiled kernel's launcher takes it (a device tensor on CUDA)."""
        return self.cuda_report if self.cuda_report is not None else self.report

    def pending(self) -> bool:
        return bool(self._flag[0])

    def raise_if_pending(self, synchronize: bool) -> None:
        if synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.copy_after_launch:
                self.host.copy_(self.report)
        if not self.pending():
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the whole report is written before kind; read it settled
            if self.copy_after_launch:
                self.host.copy_(self.report)
        kind, seq, a, b, nblocks = (int(x) for x in self.host[:5].tolist())
        self.word.zero_()
        self.report.zero_()
        self.host.zero_()
        self.errors_seen += 1
        where = (f"an earlier decode call on {self.device} (checked on the device, validation mode 'device'; "
                 "set_validation('host') checks before launch at one host sync per call)")
        if kind == 3:
            fail(f"slot_mapping[{seq}] = {a} is past the cache: it has {b} slots (num_blocks x block_size; valid "
                 f"0..{b - 1}, or negative to skip a padding token); seen by {where.replace('decode', 'cache write')}. "
                 "That token was not written")
        if kind == 1:
            fail(f"block_tables[{seq}, {a}] = {b} is out of range: the cache has {nblocks} blocks (valid "
                 f"0..{nblocks - 1}); seen by {where}. Nothing outside the cache was read; that call wrote NaN to "
                 f"sequence {seq}'s output")
        fail(f"seq_lens[{seq}] = {a} is outside 0..{b} (what its block table and max_seq_len cover); seen by {where}. "
             f"Nothing outside the cache was read; that call wrote NaN to sequence {seq}'s output")


_states: dict[torch.device, DeviceCheckState] = {}


def _key(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def state_for(device: torch.device) -> DeviceCheckState:
    key = _key(device)
    st = _states.get(key)
    if st is None:
        word = torch.zeros(1, dtype=torch.int32, device=key)
        if key.type == "cuda":
            host = torch.zeros(REPORT_LEN, dtype=torch.int32, pin_memory=True)
        else:  # Triton's interpreter: plain CPU memory
            host = torch.zeros(REPORT_LEN, dtype=torch.int32)
        st = _states[key] = DeviceCheckState(key, word, host, host)
    return st


class _PinnedAsCuda:
    """``__cuda_array_interface__`` of a pinned host buffer: under unified addressing its host address is also its
    device address, so torch.as_tensor makes a CUDA tensor over the same memory (no copy)."""

    def __init__(self, host: torch.Tensor):
        self.host = host  # kept alive by the tensor made from this object
        self.__cuda_array_interface__ = {"shape": tuple(host.shape), "typestr": "<i4", "strides": None,
                                         "data": (host.data_ptr(), False), "version": 2}


def device_report_for(device: torch.device) -> DeviceCheckState:
    """The state of ``device`` for the precompiled kernels, whose launcher takes device tensors only: the pinned
    report seen as a CUDA tensor (the kernel writes host memory directly, as in the JIT path), else a report in
    device memory copied to pinned memory after each launch (``kernel_report()`` is the one to pass)."""
    st = state_for(device)
    if st.device.type == "cuda" and not st.copy_after_launch and st.cuda_report is None:
        try:
            alias = torch.as_tensor(_PinnedAsCuda(st.report), device=st.device)
            ok = alias.device == st.device and alias.data_ptr() == st.report.data_ptr()
        except Exception:  # no unified addressing / not registered: the copying fallback
            ok = False
        if ok:
            st.cuda_report = alias
        else:
            st.use_device_report()
    return st


_sinks: dict[torch.device, DeviceCheckState] = {}


def sink_for(device: torch.device) -> DeviceCheckState:
    """Report buffers nobody reads, for kernels that always check their indices when the caller asked for no
    report (validation "host": checked before launch; "off"): the kernel still never reads outside the cache."""
    key = _key(device)
    st = _sinks.get(key)
    if st is None:
        word = torch.zeros(1, dtype=torch.int32, device=key)
        report = torch.zeros(REPORT_LEN, dtype=torch.int32, device=key)
        st = _sinks[key] = DeviceCheckState(key, word, report, torch.zeros(REPORT_LEN, dtype=torch.int32))
    return st


def raise_pending(device: torch.device) -> None:
    """Raise the report of an earlier call on ``device``, if its kernel flagged bad indices (no sync)."""
    st = _states.get(_key(device))
    if st is not None and st.pending():
        st.raise_if_pending(synchronize=False)


def check_errors(device: torch.device | str | None = None) -> None:
    """Synchronize and raise ``ValueError`` if any decode call since the last check (on ``device``, default: every
    device used) met an out-of-range block-table entry or seq_len under validation mode 'device'."""
    if device is not None:
        st = _states.get(_key(torch.device(device)))
        if st is not None:
            st.raise_if_pending(synchronize=True)
        return
    for st in list(_states.values()):
        st.raise_if_pending(synchronize=True)
