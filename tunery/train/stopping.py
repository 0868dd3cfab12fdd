"""A graceful stop of a training run: set by a tuning process's SIGTERM handler (a pause, a cancel, a server that
stops), read by the training loop after each step. The loop saves its resume state, then raises Stopped."""

from __future__ import annotations

import threading

STOP = threading.Event()


class Stopped(Exception):
    """The run stopped on request after saving its state; running it again resumes from there."""
