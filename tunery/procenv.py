"""The environment of a process that runs a training: how its threads wait and which allocator it uses.

- GOMP_SPINCOUNT=10000: an idle OpenMP thread spins briefly, then sleeps, instead of spinning for libgomp's default
  300,000 rounds on a core that another torch process on the machine is waiting for (tunery/threads.py partitions
  the cores; bench/job_bench.py measures the sharing). Sleeping at once (OMP_WAIT_POLICY=PASSIVE) made a training
  step 19% slower; this short spin measured no slower than the default.
- jemalloc, when Debian's libjemalloc2 is installed (the Makefile installs it): glibc's allocator fragments under a
  training step's pattern of large, short-lived tensors and kept 0.5 GB more resident at the step's peak; making glibc
  map and unmap each large block instead halved the step's speed. jemalloc gives the low peak for about 8% of the
  speed (bench/memory_bench.py, docs/benchmarks.md). It must be loaded before the process starts (LD_PRELOAD).
- ONEDNN_PRIMITIVE_CACHE_CAPACITY=256: oneDNN keeps each bf16 matmul kernel it builds, one per shape, up to 1,024 by
  default. A training batch's width sets the shapes, so a run of mixed lengths kept building new ones until the cache
  was full: about 0.5 GB of resident memory over a 30-step run, the memory bench's whole margin under 2 GB. At 256
  the alerts' peak fell from 1.97 to 1.81 GB and the training bench's worker ran at the same speed; at 8 it rebuilt
  kernels within a step and ran 50% slower (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from pathlib import Path

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
WAIT_POLICY = {"GOMP_SPINCOUNT": "10000"}
KERNEL_CACHE = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
# freed pages go back to the system after 1 s (default 10 s); at 0 s every step faulted its memory in again and ran
# at half speed
JEMALLOC_CONF = "dirty_decay_ms:1000,muzzy_decay_ms:0"


def compute_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the settings above added where not already set."""
    env = dict(os.environ if base is None else base)
    for key, value in {**WAIT_POLICY, **KERNEL_CACHE}.items():
        env.setdefault(key, value)
    if JEMALLOC.is_file() and "jemalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, [str(JEMALLOC), env.get("LD_PRELOAD")]))
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def has_compute_env() -> bool:
    """Whether this process started with compute_env()'s settings: they are read once, at process start (the
    allocator) or at the first matmul (the thread waits, the kernel cache)."""
    settled = all(key in os.environ for key in {**WAIT_POLICY, **KERNEL_CACHE})
    return settled and (not JEMALLOC.is_file() or "jemalloc" in os.environ.get("LD_PRELOAD", ""))


def progress_bars_only_on_a_terminal() -> None:
    """transformers draws tqdm bars on stderr while it converts, loads and saves weights: useful on a terminal,
    lines of noise in a log (a server's, CI's, `make demo | tee`). Set before transformers is imported, and
    inherited by the processes a command starts (jobs, the notebooks under `make demo`); a library user's notebook
    keeps its bars."""
    import sys

    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm's own default for `disable` (the GGUF conversion's bar)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow huggingface_hub's
