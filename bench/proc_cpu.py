"""Where a command's CPU goes, by process kind: runs COMMAND, samples /proc every 0.2 s, and prints the CPU-seconds
of every process it saw start, grouped (a pytest worker, a job zygote and the jobs it forks, Ray's processes, ...).

    .venv/bin/python bench/proc_cpu.py -- .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

The baseline is the whole: each group's share of all CPU-seconds the command's processes used (it and every process
descended from it, daemons that outlive their parents included), beside the wall time and the host's cores. A
process that lives less than 0.2 s may be missed; what it used is small by construction. Processes are told apart
by their command line when first seen (Ray's workers rename themselves later).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

HZ = os.sysconf("SC_CLK_TCK")
KINDS = [  # (kind, what its command line contains), the first match wins
    ("pytest worker (in-process tests)", "exec(eval(sys.stdin.readline()))"),
    ("job zygote: its imports", "tunery.jobs.zygote"),  # the forked jobs are split off below by their parent
    ("Ray (head, Jobs API, Train actors and workers)", "/ray/"),
    ("Ray job driver", "tunery.jobs.ray_train"),
    ("tune --local (CLI training processes)", "tune --local"),
    ("tunery serve (server processes)", "tunery.cli serve"),
    ("other tunery CLI commands", "tunery.cli"),
    ("examples and notebooks", "examples/"),
    ("chromium (console tests)", "chrom"),
    ("pip (install)", "pip"),
]


def _sample(seen: dict, start_ticks: float) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            started = int(fields[19])
            if started < start_ticks:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / HZ
            key = (int(pid), started)
            if key not in seen:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                seen[key] = {"ppid": int(fields[1]), "cmd": cmd, "cpu": cpu}
            seen[key]["cpu"] = cpu
        except (OSError, IndexError, ValueError):
            pass


def kind(proc: dict, by_pid: dict) -> str:
    parent = by_pid.get(proc["ppid"], {"cmd": ""})
    if "tunery.jobs.zygote" in proc["cmd"] and "tunery.jobs.zygote" in parent["cmd"]:
        return "jobs forked by a zygote (training)"
    for name, needle in KINDS:
        if needle in proc["cmd"]:
            return name
    return "other"


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with open("/proc/uptime") as f:
        start_ticks = float(f.read().split()[0]) * HZ - HZ  # a second of slack: the first sample comes late
    seen: dict = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv)
    while proc.poll() is None:
        _sample(seen, start_ticks)
        time.sleep(0.2)
    wall = time.monotonic() - t0
    by_pid = {pid: p for (pid, _), p in seen.items()}

    def ours(pid: int, hops: int = 0) -> bool:
        return pid == proc.pid or (pid in by_pid and hops < 64 and ours(by_pid[pid]["ppid"], hops + 1))

    seen = {key: p for key, p in seen.items() if ours(key[0])}
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for p in seen.values():
        g = groups[kind(p, by_pid)]
        g[0] += p["cpu"]
        g[1] += 1
    total = sum(g[0] for g in groups.values())
    cores = len(os.sched_getaffinity(0))
    print(f"\n{' '.join(argv)}: exit {proc.returncode}, {wall:.0f} s wall, {total:.0f} CPU-seconds in "
          f"{len(seen)} processes ({total / wall / cores:.0%} of {cores} cores)")
    print(f"{'CPU-s':>7} {'share':>6} {'procs':>5}  kind")
    for name, (cpu, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"{cpu:7.0f} {cpu / total:6.1%} {n:5d}  {name}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
