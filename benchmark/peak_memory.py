"""Peak memory of one phase of work: the process's resident set on the host, and the caching
allocator's peak on CUDA.

Host: Linux keeps the peak resident set size of a process (``VmHWM`` in ``/proc/self/status``), and
writing ``5`` to ``/proc/self/clear_refs`` resets it to the current resident size. Before a phase,
the garbage collector runs and glibc hands freed heap pages back to the system (``malloc_trim``),
so the phase's peak starts from the memory that is really live. Without ``/proc`` (macOS) only the
process-lifetime peak of ``getrusage`` exists, which cannot be reset: ``resettable`` says so.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only; the
CUDA context and the allocator's cache come on top).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
MB = 2 ** 20


def _release_freed_memory() -> None:
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).malloc_trim(0)


def reset_host_peak() -> bool:
    """Release freed memory and reset the host peak to the current resident size; False where the
    peak cannot be reset (it is then the process's lifetime peak)."""
    _release_freed_memory()
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def host_peak_mb() -> float:
    """The host's peak resident set size since the last reset (or since the process started), MiB."""
    if STATUS.is_file():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak / 1024


@dataclass
class Peak:
    """The peaks of one measured phase, MiB (``device_mb`` None off CUDA)."""

    host_mb: float = 0.0
    device_mb: float | None = None
    resettable: bool = True


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Peak]:
    """Measure the peaks of the ``with`` block; the yielded ``Peak`` is filled when it ends."""
    peak = Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    peak.resettable = reset_host_peak()
    try:
        yield peak
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak.device_mb = torch.cuda.max_memory_allocated(device) / MB
        peak.host_mb = host_peak_mb()
