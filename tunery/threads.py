"""How the torch processes of one machine share its cores: the server's generation and the tuning jobs it runs.

With more compute threads than cores, and libgomp's default of spinning for a while at every barrier before
sleeping, each process burns the cores the other one needs: a tuning run went from 9 s to 75 s per step while a
`tunery eval` ran beside it. So the cores are partitioned (docs/benchmarks.md, bench/job_bench.py):
- each of the worker's `max_concurrent` jobs gets `cores // max_concurrent` threads (all of them for one job);
- generation in the server gets the cores no job holds, and at least one while jobs run;
- job processes spin only briefly when idle (GOMP_SPINCOUNT, tunery/procenv.py), then sleep, instead of spinning on
  a core that generation is waiting for. The server keeps libgomp's default: with one
  thread (a job running) it has no team to spin, and alone, spinning is what makes its many small decode steps fast
  (passive waits made a greedy decode 1.9x slower, docs/benchmarks.md "Serving").
"""

from __future__ import annotations

import os

THREADS_ENV = "TUNERY_THREADS"  # the job process's thread count, set by the worker


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
