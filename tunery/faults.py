"""Crash points for the reliability tests (tests/test_chaos.py), off unless `TUNERY_FAULTS=1`.

With it set, a run directory may hold a file `crash-at` containing `POINT STEP`. When the training process reaches
POINT at optimizer step STEP it deletes the file (one shot: the resumed process must not die there again) and
SIGKILLs itself, exactly as an out-of-memory kill or a power cut would stop it there. Points, in step order:
`step` (after the optimizer step), `metrics` (after its metrics line), `checkpoint.written` / `checkpoint.renamed`
(around the checkpoint's commit rename), `state.written` / `state.renamed` (around the resume state's).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

CRASH_FILE = "crash-at"
POINTS = ("step", "metrics", "checkpoint.written", "checkpoint.renamed", "state.written", "state.renamed")


def point(run_dir: Path, name: str, step: int) -> None:
    """Die here if the run directory's crash-at file names this point and step."""
    if os.environ.get("TUNERY_FAULTS") != "1":
        return
    path = run_dir / CRASH_FILE
    try:
        wanted = path.read_text().split()
    except FileNotFoundError:
        return
    if wanted == [name, str(step)]:
        path.unlink()
        os.kill(os.getpid(), signal.SIGKILL)
