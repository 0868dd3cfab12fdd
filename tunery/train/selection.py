"""Keeping what is best, not what is last: the default checkpoint chosen by validation loss, and early stopping."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tunery.train import metrics as mt

MIN_IMPROVEMENT = 1e-4  # a validation loss must fall by more than this to count as better


@dataclass
class EarlyStop:
    """Stops a run after `patience` validation passes in a row without a better loss (None: never stops)."""

    patience: int | None
    best: float = float("inf")
    best_step: int = 0
    since_best: int = 0  # validation passes since the best one
    stopped: dict | None = None  # {"step", "reason"} once it has stopped the run

    def observe(self, step: int, loss: float) -> bool:
        """Record a validation pass; True when the run should stop here."""
        if loss < self.best - MIN_IMPROVEMENT:
            self.best, self.best_step, self.since_best = loss, step, 0
        else:
            self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            self.stopped = {"step": step, "reason": (
                f"validation loss did not improve for {self.since_best} evaluations in a row (best {self.best:.4f} "
                f"at step {self.best_step}, now {loss:.4f} at step {step})")}
            return True
        return False

    def state(self) -> dict:
        """What a resume state keeps (the best loss as a string: JSON has no infinity)."""
        return {**asdict(self), "best": repr(self.best)}

    @classmethod
    def restore(cls, patience: int | None, saved: dict | None) -> EarlyStop:
        if not saved:
            return cls(patience)
        return cls(patience, float(saved["best"]), saved["best_step"], saved["since_best"], saved["stopped"])


def default_checkpoint(checkpoints: list[dict]) -> tuple[dict, str]:
    """The checkpoint a tuned model serves by default, and why: the lowest validation loss among the checkpoints
    that were evaluated (ties go to the later one); the last checkpoint when none was."""
    scored = [c for c in checkpoints if mt.EVAL_LOSS in c["metrics"]]
    if not scored:
        return checkpoints[-1], "the last checkpoint (no validation set to choose by)"
    best = min(reversed(scored), key=lambda c: c["metrics"][mt.EVAL_LOSS])
    loss = best["metrics"][mt.EVAL_LOSS]
    if best is scored[-1]:
        return best, f"lowest validation loss ({loss:.4f}) of {len(scored)} checkpoints, and the last"
    return best, (f"lowest validation loss ({loss:.4f}) of {len(scored)} checkpoints; the last, at step "
                  f"{scored[-1]['step']}, had {scored[-1]['metrics'][mt.EVAL_LOSS]:.4f}")
