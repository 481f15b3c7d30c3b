"""What this machine is: the CPU's model, cores and instruction-set flags, read once per question."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_flags() -> set[str]:
    """The instruction-set flags of the CPU (empty where /proc/cpuinfo cannot be read)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return set(value.split())
    return set()


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) that leave out every VNNI instruction
_CAPS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}


def cpu_has_vnni() -> bool:
    """Whether int8 dot products run on VNNI (AVX-512 VNNI, AVX-VNNI or AMX) here, as oneDNN sees it.

    Without VNNI, oneDNN multiplies u8 by s8 in 16-bit sums that can saturate: an int8 model then
    needs weights quantized to 7 bits (:func:`cbir.extraction.engines.quantize_int8`).
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _CAPS_WITHOUT_VNNI:
        return False
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_description() -> str:
    """The CPU model and the instruction-set flags that decide reduced-precision speed."""
    flags = cpu_flags()
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in {"avx2", "fma", "avx_vnni"})
    return f"{cpu_model()} [{' '.join(wanted) or 'no avx2/avx-512/amx flags'}]"


def cpu_may_have_fast_bf16() -> bool:
    """False where bf16 can only be emulated (no AVX-512 BF16, no AMX): then it is never faster."""
    description = cpu_description()
    return "avx512_bf16" in description or "amx_bf16" in description


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return "unknown CPU"


def cpu_hardware() -> str:
    """The CPU a timing ran on, for the record: its model and the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()} ({cores} cores)"
