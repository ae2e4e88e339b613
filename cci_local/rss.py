"""This process's memory: its peak resident set, reset per stage, and handing freed
memory back to the system between stages (``run`` reports each stage's peak)."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """The peak RSS since the process started or since ``reset_peak``: VmHWM on Linux
    (ru_maxrss survives exec, so a child would report its parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 2**20 if sys.platform == "darwin" else 2**10  # macOS: bytes, Linux: KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def reset_peak() -> bool:
    """Start measuring the peak afresh (Linux: ``clear_refs`` 5); False where the system
    cannot, and the peak then runs from the start of the process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release() -> None:
    """Collect garbage and return the C heap's free memory to the system (glibc's
    ``malloc_trim``): what one stage freed (a trainer's tensors, a teacher) does not
    stay in the process's resident set while the next stage runs."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
