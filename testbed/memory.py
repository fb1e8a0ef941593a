"""Keep freed memory in the process instead of handing it back to the kernel.

glibc's malloc serves large blocks (from 128 KiB, rising to 32 MiB as it adapts) with fresh
``mmap`` calls, and trims its heap whenever enough memory at its top is free. A training step
frees and reallocates the same activation-sized tensors every time, so with these defaults each
step maps new pages and the kernel zeroes every one on first touch. On the KVM guest of the
README (`python benchmarks/page_faults.py`, three runs) the first LRN layer's forward and
backward took 7.6-11.6 ms with these defaults and 6.2-6.8 ms with the setting below, and the
32 px width-0.25 training step with LRN 1.19-1.34x the step without it, against 1.13-1.19x.

``keep_freed_memory``, once per process, fixes the mmap threshold at its maximum (32 MiB) and
stops the trimming: the memory a step used stays mapped for the next one. The price is that the
heap stays at its high-water mark, which a training process reaches on every step anyway (that
benchmark's processes ended at 920 MB resident against 898 MB with the defaults). Blocks of
32 MiB and more are still mapped afresh: served from the heap too (M_MMAP_MAX = 0), a 64 MiB
block allocated again and again held +450 MB, because an aligned request never fits exactly in
the block freed before it. Set ``TESTBED_MALLOC=system`` to keep the C library's own behaviour.
Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
LARGEST_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit systems
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before any trim

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve blocks under 32 MiB from its heap and never trim it.
    Idempotent; True when the setting is in force in this process."""
    if "kept" not in _state:
        _state["kept"] = _apply()
    return _state["kept"]


def freed_memory_kept() -> bool:
    """Whether keep_freed_memory is in force in this process (it never applies it)."""
    return _state.get("kept", False)


def _apply() -> bool:
    if os.environ.get("TESTBED_MALLOC", "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # a fixed threshold also stops glibc from adapting it (and the trim threshold) to freed blocks
    return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM))
