"""Batch size chosen by memory (``--batch-size auto``).

On a device that reports its memory (CUDA), two probe batches of 1 and 2 blank images
measure what a batch costs: the peak allocated above what was allocated before, so
``peak(n) = fixed + n * per_image``.  The batch is then the largest that fits in
``fraction`` of the free memory, at most ``cap``:

    batch = clamp(floor((fraction * free - fixed) / per_image), 1, cap)

On the CPU nothing limits a batch the same way (activations of a batch of 8 are tens of
MB against GBs of RAM, and throughput does not grow past a few images per batch on a
CPU), so ``auto`` is :data:`CPU_BATCH`.  The probe runs once per detector, before its
first batch; the peaks are read after the probes only, so there is no host-device sync
per image.  Measured only with a fake memory counter here (no GPU was lent to this
project): the formula and the probe's bookkeeping are tested, not a real card.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

CPU_BATCH = 8
MAX_AUTO_BATCH = 64
MEMORY_FRACTION = 0.8


def batch_for_memory(free_bytes: int, fixed_bytes: int, per_image_bytes: int, *,
                     fraction: float = MEMORY_FRACTION, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch whose probe-measured cost fits in ``fraction`` of ``free_bytes``
    (at least 1, at most ``cap``)."""
    if per_image_bytes <= 0:
        return cap
    return max(1, min(cap, int((fraction * free_bytes - fixed_bytes) // per_image_bytes)))


class MemoryCounter(Protocol):
    """What the probe reads from a device: free bytes, allocated bytes, and the peak
    allocated since the last reset."""

    def free(self) -> int: ...
    def allocated(self) -> int: ...
    def reset_peak(self) -> None: ...
    def peak(self) -> int: ...


class CudaMemory:
    """:class:`MemoryCounter` of one CUDA device (torch's caching allocator statistics)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def free(self) -> int:
        return int(torch.cuda.mem_get_info(self.device)[0])

    def allocated(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.memory_allocated(self.device))

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


def probe_batch_size(run: Callable[[int], object], counter: MemoryCounter, *, fraction: float = MEMORY_FRACTION,
                     cap: int = MAX_AUTO_BATCH) -> int:
    """Run ``run(1)`` and ``run(2)`` (a batch of that many images through the model) and
    choose the batch from their peaks (module docstring)."""
    base = counter.allocated()
    peaks = []
    for n in (1, 2):
        counter.reset_peak()
        run(n)
        peaks.append(max(counter.peak() - base, 0))
    per_image = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_image, 0)
    return batch_for_memory(counter.free(), fixed, per_image, fraction=fraction, cap=cap)


def auto_batch_size(run: Callable[[int], object], device: torch.device,
                    counter: MemoryCounter | None = None) -> int:
    """``--batch-size auto`` on ``device``: probed where the device counts its memory
    (CUDA, or any ``counter`` given), else :data:`CPU_BATCH`."""
    if counter is None:
        if device.type != "cuda":
            return CPU_BATCH
        counter = CudaMemory(device)
    return probe_batch_size(run, counter)
