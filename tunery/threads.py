"""How the torch processes of one machine share its cores: the server's generation and the tuning jobs it runs.

With more compute threads than cores, and libgomp's default of spinning for a while at every barrier before
sleeping, each process burns the cores the other one needs: a tuning run went from 9 s to 75 s per step while a
`tunery eval` ran beside it. So the cores are partitioned (docs/benchmarks.md, bench/job_bench.py):
- each of the worker's `max_concurrent` jobs gets `cores // max_concurrent` threads (all of them for one job);
- generation in the server gets the cores no job holds, and at least one while jobs run;
- while generation runs beside them, the jobs give some of their threads back: generation gets a fair share of the
  cores (one party of jobs + 1) and the jobs the rest, until it has been idle for SERVING_HOLD_SECONDS. The worker
  writes each job's allowance to a file in its job directory and the job reads it before each step (`Allowance`).
  Two threads on one core make a training step wait at every OpenMP barrier for the thread that is not running:
  with a 2-thread job beside 1-thread generation on 2 cores, the job ran 2.5x slower than alone;
- job processes spin only briefly when idle (GOMP_SPINCOUNT, tunery/procenv.py), then sleep, instead of spinning on
  a core that generation is waiting for. The server keeps libgomp's default: with one
  thread (a job running) it has no team to spin, and alone, spinning is what makes its many small decode steps fast
  (passive waits made a greedy decode 1.9x slower, docs/benchmarks.md "Serving").
"""

from __future__ import annotations

import os
from pathlib import Path

THREADS_ENV = "TUNERY_THREADS"  # the job process's thread count, set by the worker
SHARE_FILE = "threads"  # in a job's directory: how many of those threads it may use now (written by the worker)
SHARE_FILE_ENV = "TUNERY_THREADS_FILE"  # that file's path, for the job process
SERVING_HOLD_SECONDS = 2.0  # generation counts as running this long after its last call


def cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def per_job(max_concurrent: int) -> int:
    """Threads for each job when up to `max_concurrent` run at once."""
    return max(1, cores() // max(1, max_concurrent))


def for_serving(running_jobs: int, job_threads: int) -> int:
    """Threads for the server's generation while `running_jobs` local jobs use `job_threads` each."""
    return max(1, cores() - running_jobs * job_threads)


def for_training(local_world_size: int = 1) -> int:
    """A training process's threads: what the worker chose for it, else its share of the cores."""
    chosen = os.environ.get(THREADS_ENV)
    if chosen:
        return max(1, int(chosen))
    return max(1, cores() // local_world_size)


def while_serving(running_jobs: int, job_threads: int) -> int:
    """Each job's threads while the server generates beside `running_jobs` jobs of `job_threads` threads: generation
    gets one fair share of the cores, the jobs split the rest (at least one thread each, never more than before)."""
    serving = max(1, cores() // (running_jobs + 1))
    return max(1, min(job_threads, (cores() - serving) // max(1, running_jobs)))


def offer(path: Path, n: int) -> None:
    """Tell the job process that reads `path` to use `n` threads from its next step (an atomic replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{n}\n")
    os.replace(tmp, path)


class Allowance:
    """A training process's thread count now: at most the one it started with (`most`), lowered while its server
    generates (the file in SHARE_FILE_ENV). Reading it costs one stat when nothing changed. On the 2-core CPU
    machines measured, a job trained on 1 and on 2 threads wrote byte-identical adapters (docs/benchmarks.md)."""

    def __init__(self, most: int) -> None:
        self.most = self.now = most
        self._path = os.environ.get(SHARE_FILE_ENV)
        self._seen: tuple[int, int] | None = None

    def poll(self) -> int:
        if self._path:
            try:
                st = os.stat(self._path)
                if (st.st_ino, st.st_mtime_ns) != self._seen:
                    self._seen = (st.st_ino, st.st_mtime_ns)
                    self.now = max(1, min(self.most, int(Path(self._path).read_text())))
            except (OSError, ValueError):  # not written yet, or by something else: keep what we have
                pass
        return self.now
