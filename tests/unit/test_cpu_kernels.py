"""CPU kernels pinned to AVX2 before torch loads; a typo in the switch is an error, never a silent change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quant_fixtures import cpu_kernels

pytest_plugins = ["pytester"]

PROBE = (
    "import quant_fixtures, os, torch; "
    "print(os.environ.get('ATEN_CPU_CAPABILITY'), os.environ.get('MKL_ENABLE_INSTRUCTIONS'), "
    "torch.backends.cpu.get_cpu_capability())"
)
# int8 products must stay exact under the pin (oneDNN restricted to AVX2 saturates them).
INT_MM = (
    "import quant_fixtures, torch; torch.manual_seed(0); "
    "a = torch.randint(-127, 128, (64, 576), dtype=torch.int8); "
    "b = torch.randint(-127, 128, (256, 576), dtype=torch.int8); "
    "print(int((torch._int_mm(a, b.t()).long() - a.long() @ b.long().t()).abs().max()))"
)


def run_probe(code: str = PROBE, **env: str) -> str:
    import os

    base = {k: v for k, v in os.environ.items() if k not in (*cpu_kernels.AVX2_SWITCHES, cpu_kernels.MODE_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.skipif(not cpu_kernels._x86_64(), reason="the pin is for x86-64 CPUs")
def test_importing_the_package_before_torch_pins_avx2_kernels() -> None:
    assert run_probe() == "avx2 AVX2 AVX2"


def test_int8_products_stay_exact_with_the_pin() -> None:
    assert run_probe(INT_MM) == "0"


@pytest.mark.skipif(not cpu_kernels._x86_64(), reason="the pin is for x86-64 CPUs")
def test_native_and_the_users_own_switches_are_kept() -> None:
    native = run_probe(QUANT_FIXTURES_CPU_KERNELS="native").split()
    assert native[:2] == ["None", "None"]
    assert run_probe(ATEN_CPU_CAPABILITY="default").split()[:2] == ["default", "AVX2"]


def test_the_mode_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_kernels.MODE_ENV, " Native ")
    assert cpu_kernels.mode() == "native"
    monkeypatch.setenv(cpu_kernels.MODE_ENV, "avx-2")
    with pytest.raises(
        cpu_kernels.CpuKernelsError,
        match=r"QUANT_FIXTURES_CPU_KERNELS='avx-2': expected one of "
        r"avx2, native",
    ):
        cpu_kernels.mode()


def test_a_typo_in_the_mode_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    monkeypatch.setenv(cpu_kernels.MODE_ENV, "nativ")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: $QUANT_FIXTURES_CPU_KERNELS='nativ': expected one of avx2, native"])


def test_kernels_not_pinned_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch imported before the package (this test process: AVX2 already, or the CPU's own)."""
    import torch

    monkeypatch.delenv(cpu_kernels.MODE_ENV, raising=False)
    expected = (
        None
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT") or not cpu_kernels._x86_64()
        else "not AVX2"
    )
    problem = cpu_kernels.problem()
    assert (
        (problem is None)
        if expected is None
        else (problem is not None and "not AVX2" in problem and "native" in problem)
    )
    monkeypatch.setenv(cpu_kernels.MODE_ENV, "native")
    assert cpu_kernels.problem() is None
