"""Vertex's tuning metric names, written per step to metrics.jsonl and TensorBoard event files.

metrics.jsonl keeps Vertex's exact names ("/train_total_loss"); TensorBoard tags drop the leading "/", which
TensorBoard does not allow in a tag ("train_total_loss")."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

TRAIN_LOSS = "/train_total_loss"
TRAIN_ACCURACY = "/train_fraction_of_correct_next_step_preds"  # token accuracy on supervised tokens
TRAIN_PREDICTIONS = "/train_num_predictions"  # supervised tokens in the step
EVAL_LOSS = "/eval_total_loss"
EVAL_ACCURACY = "/eval_fraction_of_correct_next_step_preds"
EVAL_PREDICTIONS = "/eval_num_predictions"
METRICS_FILE = "metrics.jsonl"
EVENTS_DIR = "events"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in step order. A torn last line (a process killed mid-write) is
    skipped: it is the record of a step whose resume state was never saved, so the step will be trained again."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for k, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if k != len(lines) - 1:
                raise
    return records


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, as the seed notebook's get_metrics returns them."""
    pts = [(r["step"], r[name]) for r in records if name in r]
    return [s for s, _ in pts], [v for _, v in pts]


class MetricsLog:
    """Appends one JSON object per record; on resume, drops records past the resumed step first."""

    def __init__(self, run_dir: Path, resume_step: int = 0) -> None:
        self.path = run_dir / METRICS_FILE
        kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
        _rewrite(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(logdir=str(run_dir / EVENTS_DIR), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, epoch: float, values: dict[str, float]) -> None:
        wall = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # TensorBoard's wallTime (RFC 3339)
        self._file.write(json.dumps({"step": step, "epoch": round(epoch, 4), **values, "time": wall}) + "\n")
        self._file.flush()
        for name, value in values.items():
            self._tb.add_scalar(name.lstrip("/"), value, step)  # TensorBoard tags may not start with "/"

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _rewrite(path: Path, text: str) -> None:
    """Replace a file's content atomically (temp file, fsync, rename): a kill leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
