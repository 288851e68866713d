"""CPU kernels pinned to AVX2, so a CPU evaluation gives the same numbers on every x86-64 CPU.

torch, oneDNN and MKL pick kernels by instruction set (AVX2, AVX512, AMX); their float results
differ in the last bits, and LLM.int8's outlier threshold and rounding turn such bits into other
numbers (SmolLM2 INT8 at CI's budget: ΔPPL +1.88 % with AVX512 kernels, +1.42 % with AVX2, on
one machine). Every x86-64 CPU in use has AVX2, so the suite asks for AVX2 kernels before torch
loads: ATen's dispatch (ATEN_CPU_CAPABILITY) and MKL (MKL_ENABLE_INSTRUCTIONS, and MKL_CBWR=AVX2,STRICT,
MKL's reproducible mode: without it, on an Intel Xeon with AMX, MKL's float GEMM gave a row other
last bits in a batch than alone, so LLM.int8 rows depended on their neighbours). oneDNN is left
alone on purpose: restricted to AVX2 its int8 GEMM saturates (torch._int_mm off by up to 119,357 on
random int8 matrices, the overflow bitsandbytes avoids), which would make torchao's int8 wrong; its
int8 products are exact on every other ISA. A variable the user set is left as it is, and
QUANT_FIXTURES_CPU_KERNELS=native keeps each library's own choice. The environment each number was
measured in (capability and switches) is recorded in every report and key.
"""

from __future__ import annotations

import os
import platform
import sys

MODE_ENV = "QUANT_FIXTURES_CPU_KERNELS"
MODES = ("avx2", "native")
DEFAULT_MODE = "avx2"
AVX2_SWITCHES = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "MKL_CBWR": "AVX2,STRICT"}


class CpuKernelsError(ValueError):
    """An unknown QUANT_FIXTURES_CPU_KERNELS value (a typo must not silently change the numbers)."""


def mode() -> str:
    value = os.environ.get(MODE_ENV, DEFAULT_MODE).strip().lower() or DEFAULT_MODE
    if value not in MODES:
        raise CpuKernelsError(f"${MODE_ENV}={os.environ[MODE_ENV]!r}: expected one of {', '.join(MODES)}")
    return value


def _x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def pin_before_torch() -> None:
    """Ask for AVX2 kernels (unless native, or not an x86-64 CPU). Must run before torch is
    imported: ATen reads its switch once. A bad mode is left for :func:`problem` to report."""
    try:
        wanted = mode()
    except CpuKernelsError:
        return
    if wanted != "avx2" or not _x86_64() or "torch" in sys.modules:
        return
    for name, value in AVX2_SWITCHES.items():
        os.environ.setdefault(name, value)


def problem() -> str | None:
    """Why the CPU kernels are not what the mode asks for, or None (checked once torch is loaded)."""
    try:
        wanted = mode()
    except CpuKernelsError as exc:
        return str(exc)
    if wanted != "avx2" or not _x86_64():
        return None
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "DEFAULT"):
        return (
            f"CPU kernels: ATen dispatches {capability}, not AVX2: torch was imported before the plugin could "
            f"pin it (start pytest directly, or set ATEN_CPU_CAPABILITY=avx2 "
            f"MKL_ENABLE_INSTRUCTIONS=AVX2 yourself, or {MODE_ENV}=native to accept this CPU's own kernels)"
        )
    return None
