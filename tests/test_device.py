"""The CPU precision choice: bf16 only where the CPU has bf16 matmul instructions and they measure faster."""

from __future__ import annotations

import pytest

from tunery import device

AVX2_EPYC = "fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes vpclmulqdq"  # an AMD EPYC of this machine class
SAPPHIRE_RAPIDS = AVX2_EPYC + " avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"


def test_flags_are_read_from_cpuinfo_and_unknown_without_a_flags_line(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {AVX2_EPYC}\n\nprocessor\t: 1\n"
                   f"flags\t\t: {AVX2_EPYC}\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert device.cpu_flags(str(x86)) == set(AVX2_EPYC.split())
    assert device.cpu_flags(str(arm)) is None and device.cpu_flags(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("flags, expected", [(AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True),
                                             (AVX2_EPYC + " avx512f avx512_bf16", True), (None, None)])
def test_bf16_matmul_instructions(flags, expected):
    assert device.has_bf16_matmul(None if flags is None else set(flags.split())) is expected


def test_this_machine_without_bf16_instructions_trains_in_float32(monkeypatch):
    """Where the flags say no bf16 instructions, pick() answers float32 without measuring (35 s here before)."""
    monkeypatch.delenv("TUNERY_PRECISION", raising=False)
    device.pick.cache_clear()
    device.cpu_bf16_speedup.cache_clear()
    try:
        chosen = device.pick()
    finally:
        device.pick.cache_clear()
    if device.has_bf16_matmul(device.cpu_flags()) is False:
        assert chosen == device.Runtime("cpu", None) and device.cpu_bf16_speedup.cache_info().currsize == 0
    else:  # a host with AMX or AVX512-BF16 (or unknown flags) measures
        assert chosen.autocast in (None, "bfloat16")
