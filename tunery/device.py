"""Where to compute and in which precision, decided by measurement rather than a flag."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass

from tunery.errors import ConfigError

log = logging.getLogger("tunery")

BF16_MIN_SPEEDUP = 1.3  # use bf16 autocast on CPU only when its matmuls are clearly faster


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" | "cuda"
    autocast: str | None  # "bfloat16" or None (float32)

    def autocast_context(self):
        import contextlib

        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=getattr(torch, self.autocast))


def _matmul_seconds(dtype, n: int = 512, k: int = 576, m: int = 1536, reps: int = 20, rounds: int = 5) -> float:
    """The median time of `rounds` rounds of `reps` [n, k] @ [k, m] matmuls in `dtype`."""
    import torch

    a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        times.append(time.perf_counter() - t)
    return sorted(times)[rounds // 2]


EMULATED = 0.25  # fp32 / bf16 below this after one round: no bf16 hardware, whatever the load (0.009 on AVX2)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """This x86 CPU's feature flags, as Linux lists them; None where unknown (another OS or architecture)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def has_bf16_matmul(flags: set[str] | None) -> bool | None:
    """Whether the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16); None when the flags are unknown.
    Without them oneDNN emulates bf16: on an AVX2-only AMD EPYC a bf16 matmul took 112x the fp32 one, and measuring
    that took 35 s of every training process (all of a tiny test job's time)."""
    return None if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 / bf16 matmul time on this CPU (about 2 where AVX512-BF16 or AMX exist, below 1 where not): the fastest
    of seven interleaved rounds of each. Other work on the machine (a server generating, another job) slows some
    rounds; measured one dtype after the other, it once made a loaded 2-core machine pick float32. A first round
    far below 1 (emulated bf16) ends the measurement: load slows a round by 2x, not 4x."""
    import torch

    f32, b16 = [], []  # seconds per matmul
    for i in range(7):
        reps = 1 if i == 0 else 4  # one bf16 matmul first: emulated, it takes 100x the fp32 one
        f32.append(_matmul_seconds(torch.float32, reps=4, rounds=1) / 4)
        b16.append(_matmul_seconds(torch.bfloat16, reps=reps, rounds=1) / reps)
        if min(f32) / min(b16) < EMULATED:
            break
    return min(f32) / min(b16)


@functools.cache
def pick() -> Runtime:
    """CUDA with bf16 when present; on CPU, bf16 autocast only if measured faster here. `TUNERY_PRECISION=float32`
    or `bfloat16` skips the measurement. A run records what it got in run.json and keeps it when resumed."""
    import torch

    forced = os.environ.get("TUNERY_PRECISION")
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise ConfigError("TUNERY_PRECISION", f"expected float32 or bfloat16, found {forced!r}")
        return Runtime("cuda" if torch.cuda.is_available() else "cpu", None if forced == "float32" else forced)
    if torch.cuda.is_available():
        return Runtime("cuda", "bfloat16" if torch.cuda.is_bf16_supported() else None)
    if has_bf16_matmul(cpu_flags()) is False:
        log.info("cpu: no bf16 matmul instructions (AVX512-BF16, AMX-BF16) -> float32, not measured")
        return Runtime("cpu", None)
    speedup = cpu_bf16_speedup()
    chosen = Runtime("cpu", "bfloat16" if speedup >= BF16_MIN_SPEEDUP else None)
    log.info("cpu: bf16 matmuls measured %.2fx fp32 -> %s", speedup, chosen.autocast or "float32")
    return chosen
