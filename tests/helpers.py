"""Small builders shared by tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def contents(*pairs, system: str | None = None) -> dict:
    """{"contents": [...]} from (role, text) pairs."""
    obj = {"contents": [{"role": r, "parts": [{"text": t}]} for r, t in pairs]}
    if system is not None:
        obj["systemInstruction"] = {"parts": [{"text": system}]}
    return obj


@contextmanager
def tunery_home(home: Path, default_model: Path) -> Iterator[Path]:
    """TUNERY_HOME pointing at `home`, whose config.toml makes `default_model` what Gemini names resolve to."""
    (home / "config.toml").write_text(f'default_base_model = "{default_model}"\n')
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("TUNERY_HOME", None)
        else:
            os.environ["TUNERY_HOME"] = old


def training_model(spec, rank: int = 4, b_std: float = 0.1):
    """A base model on tunery's training attention with a LoRA adapter whose B is random: B starts at zero, which
    would leave every A gradient zero, so nonzero B makes each LoRA gradient count in a comparison."""
    from tunery import models
    from tunery.train import attention
    from tunery.train.engine import _attach_lora

    base = models.load_model_fresh(spec)
    attention.use_for_training(base)
    model = _attach_lora(base, rank, 0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=b_std)
    return model


def loss_and_grads(model, ids, labels, runtime, **kw) -> tuple[float, int, int, dict]:
    """One forward and backward through the training forward (engine._forward): summed loss, correct, count, and
    every parameter's gradient of the mean loss, with the gradients cleared after."""
    from tunery.train.engine import _forward

    loss, correct, n = _forward(model, ids, labels, runtime, **kw)
    (loss / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), correct, n, grads


@contextmanager
def no_deprecated_calls_from(package_dir: Path) -> Iterator[list[str]]:
    """Fail on a DeprecationWarning or FutureWarning whose deprecated API was called from code under `package_dir`.
    The caller is the first frame outside the warning's own package (and torch's module-call plumbing, through
    which a model's forward is called): a deprecated kwarg that tunery passes to a model's forward is tunery's, a
    deprecated property that PEFT reads inside get_peft_model is PEFT's. Those others are yielded, not raised."""
    import traceback
    import warnings

    others: list[str] = []
    found: list[str] = []
    package_dir, plumbing = str(package_dir), f"{os.sep}torch{os.sep}nn{os.sep}modules{os.sep}module.py"

    def top(filename: str) -> str:
        parts = Path(filename).parts
        return parts[parts.index("site-packages") + 1] if "site-packages" in parts else filename

    def hook(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, (DeprecationWarning, FutureWarning)):
            return
        stack = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith(f"{os.sep}warnings.py")]
        origin = top(stack[-1].filename)
        caller = next((f for f in reversed(stack) if top(f.filename) != origin and not f.filename.endswith(plumbing)),
                      None)
        where = f"{category.__name__}: {message} (called from {caller.filename}:{caller.lineno})" if caller else str(message)
        (found if caller is not None and caller.filename.startswith(package_dir) else others).append(where)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        yield others
    assert not found, "tunery calls a deprecated API:\n" + "\n".join(found)


def job_spec(train: str = "x", **fields):
    """A stored job's spec, as the job service would resolve it: TuningConfig fields go to `tuning`, the rest are
    JobSpec fields (door "vertex" and the default base model unless given)."""
    import dataclasses

    from tunery.config import TuningConfig
    from tunery.jobs.spec import JobSpec

    names = {f.name for f in dataclasses.fields(TuningConfig)}
    tuning = TuningConfig(train=train, output="", **{k: fields.pop(k) for k in list(fields) if k in names})
    return JobSpec(**{"door": "vertex", "base_model": "smollm2-135m-instruct", "tuning": tuning, "train_uri": train,
                      **fields})
