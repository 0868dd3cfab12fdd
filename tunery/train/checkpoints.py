"""Checkpoints with Vertex semantics, written crash-safely; resume state; merged export.

Every directory is written into a temporary sibling, its files fsynced, renamed into place, and only then marked
complete with a `COMPLETE` file. A directory without `COMPLETE` (a crash mid-write) is ignored and cleaned up.
Nothing is pickled: weights and optimizer tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("tunery")
COMPLETE = "COMPLETE"
CHECKPOINTS_DIR = "checkpoints"
STATE_PREFIX = "state-"
ADAPTER_DIR = "adapter"
MANIFEST = "manifest.json"
RUN_FILE = "run.json"


def schedule(epochs: int, steps_per_epoch: int, last_only: bool = False) -> dict[int, int]:
    """{step: epoch} of the exported checkpoints. Vertex: fewer than 10 epochs -> one per epoch; 10 or more ->
    about 10 evenly spaced epochs, the final one included; export-last-only -> the final one."""
    if last_only:
        ends = [epochs]
    elif epochs < 10:
        ends = list(range(1, epochs + 1))
    else:
        ends = sorted({max(1, round(k * epochs / 10)) for k in range(1, 11)} | {epochs})
    return {e * steps_per_epoch: e for e in ends}


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(final: Path, write: Callable[[Path], None], crash: Callable[[str], None] | None = None) -> Path:
    """Build `final` via a temp dir: write, mark COMPLETE, fsync, then one rename is the commit point. A directory
    `final` replaces is moved aside first and removed after. `crash(point)` is the fault-injection hook of the
    reliability tests ("written": before the rename, "renamed": after it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old = None
    try:
        write(tmp)
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_tree(tmp)
        if crash:
            crash("written")
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{final.name}-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if crash:
            crash("renamed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON file atomically (temp file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean_incomplete(run_dir: Path) -> None:
    """Remove leftovers of a crash: temp dirs and directories never marked complete."""
    for path in list(run_dir.glob(".tmp-*")) + list((run_dir / CHECKPOINTS_DIR).glob(".tmp-*")):
        shutil.rmtree(path, ignore_errors=True)
    for path in list(run_dir.glob(f"{STATE_PREFIX}*")) + list((run_dir / CHECKPOINTS_DIR).glob("*")):
        if path.is_dir() and not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- resume state

def save_state(run_dir: Path, model, optimizer, step: int, extra: dict,
               crash: Callable[[str], None] | None = None) -> Path:
    """Everything needed to continue: LoRA weights, optimizer tensors, RNG, step, and in `extra` the checkpoint ids
    exported so far. Older states are removed only once this one is in place."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, tmp / "adapter_model.safetensors")
        sd = optimizer.state_dict()
        tensors = {f"{i}.{k}": v.cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "param_groups": sd["param_groups"], **extra}, indent=1))

    path = write_atomically(run_dir / f"{STATE_PREFIX}{step:08d}", write, crash)
    for old in run_dir.glob(f"{STATE_PREFIX}*"):
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_state(run_dir: Path) -> Path | None:
    states = sorted(p for p in run_dir.glob(f"{STATE_PREFIX}*") if p.is_dir() and is_complete(p))
    return states[-1] if states else None


def load_state(path: Path, model, optimizer) -> dict:
    """Restore what save_state wrote; returns state.json (with "step")."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = json.loads((path / "state.json").read_text())
    set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    tensors = load_file(path / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("rng.torch"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


# ---------------------------------------------------------------- exported checkpoints and merge

def checkpoint_ids(exports: dict[int, int]) -> dict[int, str]:
    """{step: checkpoint id}: ids 1..K in step order of the Vertex schedule. Derived from the step, never from what
    is on disk, so a resumed run that exports a step again writes the same id (idempotent), never a new one."""
    return {step: str(k) for k, step in enumerate(sorted(exports), start=1)}


def save_checkpoint(run_dir: Path, checkpoint_id: str, model, manifest: dict,
                    crash: Callable[[str], None] | None = None) -> Path:
    """A PEFT adapter directory (adapter_config.json, adapter_model.safetensors) plus manifest.json."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _gguf_adapter(tmp, manifest)

    return write_atomically(run_dir / CHECKPOINTS_DIR / f"checkpoint-{checkpoint_id}", write, crash)


def _gguf_adapter(adapter_dir: Path, manifest: dict) -> None:
    """The adapter as a GGUF LoRA adapter too, for llama.cpp serving, when the base model comes from a GGUF. Never
    fails the checkpoint: an adapter without one is converted when llama.cpp first serves it."""
    from tunery import models
    from tunery.serve import gguf

    try:
        spec = models.resolve(manifest["base_model"]["name"])
        if gguf.convertible(spec):
            gguf.write_adapter(adapter_dir, models.verified_gguf(spec)[0], adapter_dir / gguf.ADAPTER_FILE)
    except Exception as exc:  # noqa: BLE001 - logged; serving converts it later or says why not
        log.warning("no GGUF adapter written for %s: %s", adapter_dir.name, exc)


def keep_checkpoints(run_dir: Path, ids: list[str]) -> None:
    """On resume: remove exported checkpoints the resume state does not list (written after it, by a run killed
    before its state was saved). The resumed run exports them again, under the same ids."""
    for path in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*"):
        if path.name.split("-", 1)[1] not in ids:
            shutil.rmtree(path, ignore_errors=True)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*") if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def export_merged(adapter_dir: Path, out: Path) -> Path:
    """Base model with the adapter merged in, as a safetensors Hugging Face model directory (atomic)."""
    from peft import PeftModel

    from tunery import models

    manifest = json.loads((adapter_dir / MANIFEST).read_text())
    spec = models.resolve(manifest["base_model"]["name"])

    def write(tmp: Path) -> None:
        base = models.load_model_fresh(spec)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        models.load_tokenizer(spec).save_pretrained(tmp)
        (tmp / "tunery.json").write_text(json.dumps({"merged_from": str(adapter_dir), **manifest}, indent=1))

    return write_atomically(out, write)


def adapter_settings(adapter_dir: Path) -> dict:
    """TuningConfig fields a tuned adapter fixes for a run that continues from it: rank, alpha, target layers."""
    from tunery.config import LORA_TARGETS, default_lora_alpha

    found = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    modules = set(found.get("target_modules") or [])
    targets = next((k for k, v in LORA_TARGETS.items() if isinstance(v, list) and set(v) == modules), "all-linear")
    return {"adapter_size": found["r"], "lora_alpha": found.get("lora_alpha", default_lora_alpha(found["r"])), "lora_targets": targets}
