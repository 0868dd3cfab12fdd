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
