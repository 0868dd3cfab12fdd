"""One supervised LoRA tuning run, top to bottom: spec -> data -> render -> model + LoRA -> loop -> artifacts.

Run directory (`--output`):
    run.json                what this run is (base model, template, datasets, hyperparameters; precision and threads,
                            measured once and kept on resume); resume checks it
    trained.jsonl           append-only: one line per optimizer step trained (its learning rate too), by every process
                            that ran (never rewritten)
    metrics.jsonl, events/  Vertex metric names per step (JSON lines and TensorBoard)
    state-XXXXXXXX/         latest resume state (adapter, optimizer, RNG, step); crash-safe
    checkpoints/checkpoint-K/  exported PEFT adapters with manifest.json (Vertex cadence)
    adapter/                the final adapter;  manifest.json  the finished run
Re-running the same command on the same directory resumes from the last complete state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery import faults, locks, models, threads
from tunery.config import TuningConfig, default_epochs
from tunery.data.formats import parse
from tunery.data.jsonl import read_records
from tunery.data.validate import Limits, validate
from tunery.device import Runtime, pick
from tunery.errors import ConfigError, TrainingError
from tunery.data import media as md
from tunery.data import preference as preference_data
from tunery.text.batching import batch_order, collate, shared_prefix
from tunery.text.vision_template import collate_media
from tunery.train import preference as pt
from tunery.text.chat_template import ChatTemplate, Rendered
from tunery.train import attention
from tunery.train import checkpoints as ck
from tunery.train import distributed
from tunery.train.distributed import Dist
from tunery.train import lora, memory, stopping
from tunery.train import metrics as mt
from tunery.train.loss import linear_cross_entropy
from tunery.train.selection import EarlyStop, default_checkpoint

log = logging.getLogger("tunery")
WARMUP_FRACTION = 0.05  # of all steps, linear warmup; then linear decay to zero
EVALS_PER_RUN = 5  # validation passes spread over the run, the last at the final step (each is a full pass)
TRAINED_LOG = "trained.jsonl"  # append-only record of every step trained (what the resume tests read)

Event = dict[str, Any]


@dataclass
class RunResult:
    output: Path
    steps: int
    epochs: int
    metrics: dict[str, float]  # last train (and eval) metrics
    checkpoints: list[dict] = field(default_factory=list)  # [{"checkpointId", "epoch", "step", "path"}]
    resumed_from: int | None = None  # step the run continued from, if it did
    default_checkpoint: dict | None = None  # {"checkpointId", "step", "reason"}: what adapter/ holds, and why
    early_stopping: dict | None = None  # {"step", "reason"} when validation loss stopped the run early


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _render_file(path: str, template: ChatTemplate, max_length: int) -> list[Rendered]:
    examples = [parse(obj, line)[0] for line, obj, issue in read_records(path) if issue is None]
    folder = Path(path).parent  # relative image paths are relative to the dataset
    return template.render_batch([md.absolute(ex, folder) for ex in examples if ex is not None], max_length)


def _collate(rows: list[Rendered], pad_id: int):
    """(ids, labels, media): media are a vision-language model's image tensors, None for text."""
    ids, labels = collate(rows, pad_id)
    return ids, labels, (collate_media(rows) if any(r.media for r in rows) else None)


def _lr_at(step: int, total: int, peak: float, schedule: str = "linear") -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then (by `schedule`) linear decay to zero,
    cosine decay to zero, or constant."""
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    left = max(0.0, (total - step) / max(1, total - warmup))  # 1 right after the warmup, 1/(total - warmup) at the end
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return peak * 0.5 * (1 - math.cos(math.pi * left))
    return peak * left


def _forward(model, ids, labels, runtime: Runtime, recompute: memory.LayerRecompute | None = None,
             share_prefix: bool = True, media: dict | None = None):
    """Summed loss, correct predictions and count over the supervised positions only. Logits are computed
    just where a label exists (the vocabulary projection is a large share of a small model's compute), a chunk at a
    time and never kept (tunery/train/loss.py). The tokens all rows begin with run once (attention.py); `recompute`
    is sized for the tokens actually computed."""
    import torch

    base = model.get_base_model()
    ids, labels = ids.to(runtime.device), labels.to(runtime.device)
    decoder = base.get_decoder()
    shared = shared_prefix(ids, labels) if share_prefix and media is None and not _multimodal(base) else 0
    if recompute is not None:
        recompute.set_for(shared + ids[:, shared:].numel())
    # right padding + causal: no mask needed. No KV cache either: transformers would otherwise copy every layer's
    # keys and values into one (the config's use_cache) and keep them to the end of the forward pass.
    with runtime.autocast_context():
        if shared:  # one row: the prefix once, then each row's remainder (attention.py)
            rows, width = ids.shape
            packed = torch.cat((ids[0, :shared], ids[:, shared:].flatten()))[None]
            positions = torch.cat((torch.arange(shared), torch.arange(shared, width).repeat(rows)))[None]
            out = decoder(input_ids=packed, position_ids=positions.to(ids.device), use_cache=False,
                          **{attention.SHARED: (shared, rows)})
            hidden = out.last_hidden_state[0, shared:].view(rows, width - shared, -1)
            labels = labels[:, shared:]
        elif _multimodal(base):  # the vision tower encodes the images into their token positions
            media = {k: v.to(runtime.device) for k, v in (media or {}).items()}
            hidden = base.model(input_ids=ids, use_cache=False, **media).last_hidden_state
        else:
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    sel = targets != -100
    head = base.get_output_embeddings()
    dtype = getattr(torch, runtime.autocast) if runtime.autocast else head.weight.dtype
    gold = targets[sel]
    loss, correct = linear_cross_entropy(hidden[:, :-1][sel], head.weight, gold, dtype,
                                         getattr(base.config, "final_logit_softcapping", None))
    return loss, correct, int(gold.numel())


def _multimodal(model) -> bool:
    return getattr(getattr(model, "config", None), "vision_config", None) is not None


def evaluate(model, rows: list[Rendered], batch_size: int, pad_id: int, runtime: Runtime, dist: Dist = Dist(),
             beta: float = 0.1) -> dict[str, float]:
    """Vertex eval metrics over a whole dataset (each rank takes a share): token-mean loss, accuracy, count; for
    preference pairs, the pair-mean DPO loss, reward accuracy and margin."""
    import torch

    if rows and isinstance(rows[0], pt.PairRows):
        mine = dist.shard(rows)
        loss_sum = correct = margin = 0.0
        with torch.no_grad():
            for k in range(0, len(mine), batch_size):
                total, sums = pt.loss(model, mine[k:k + batch_size], pad_id, runtime, beta)
                loss_sum, correct, margin = loss_sum + float(total), correct + sums["correct"], margin + sums["margin"]
        loss_sum, correct, margin, n = dist.sum(loss_sum, correct, margin, len(mine))
        return {mt.EVAL_LOSS: loss_sum / max(n, 1), pt.EVAL_REWARD_ACCURACY: correct / max(n, 1),
                pt.EVAL_REWARD_MARGIN: margin / max(n, 1), pt.EVAL_PAIRS: int(n)}

    mine = dist.shard(sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids)))
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for k in range(0, len(mine), batch_size):
            ids, labels, media = _collate([rows[i] for i in mine[k:k + batch_size]], pad_id)
            s, c, m = _forward(model, ids, labels, runtime, media=media)
            loss_sum, correct, n = loss_sum + float(s), correct + c, n + m
    loss_sum, correct, n = dist.sum(loss_sum, correct, n)
    return {mt.EVAL_LOSS: loss_sum / max(n, 1), mt.EVAL_ACCURACY: correct / max(n, 1), mt.EVAL_PREDICTIONS: int(n)}


def _attach_lora(model, rank: int, seed: int, alpha: float | None = None, targets: str = "all-linear"):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunery.config import LORA_TARGETS, default_lora_alpha

    torch.manual_seed(seed)  # LoRA A matrices are random; B starts at zero
    modules = LORA_TARGETS[targets]
    if _multimodal(model):  # the language model only: the vision (and audio) towers and the projector stay frozen
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] if modules == "all-linear" \
            else modules
        modules = rf".*\b(?:language_model|text_model)\b.*\.(?:{'|'.join(names)})$"
    config = LoraConfig(r=rank, lora_alpha=default_lora_alpha(rank) if alpha is None else alpha, lora_dropout=0.0,
                        target_modules=modules, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # PEFT: none of the named layers exists in this architecture
        raise ConfigError("--lora-targets", f"{targets!r} names layers this base model does not have ({exc})",
                          hint="use --lora-targets all-linear") from exc


def _frozen_linear_weights_to(model, dtype) -> None:
    """Store the frozen weights under the adapters in `dtype`. Autocast would cast each of them to bf16 on every
    op anyway (same matmul numerics), so this only removes copies: 6.5% per step measured, docs/benchmarks.md."""
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(base, "weight") and not base.weight.requires_grad:
            base.weight.data = base.weight.data.to(dtype)


def _load_adapter_weights(model, adapter_dir: Path, cfg: TuningConfig) -> None:
    """Start from a tuned adapter (continuous tuning). Its rank, alpha and target layers must be the run's."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = ck.adapter_settings(adapter_dir)
    for key, flag, ours in (("adapter_size", "--adapter-size", cfg.adapter_size), ("lora_alpha", "--lora-alpha", cfg.alpha),
                            ("lora_targets", "--lora-targets", cfg.lora_targets)):
        if found[key] != ours:
            raise ConfigError(flag, f"expected the pre-tuned adapter's {found[key]}, found {ours}")
    set_peft_model_state_dict(model, load_file(adapter_dir / "adapter_model.safetensors"))


def _identity(cfg: TuningConfig, spec, template: ChatTemplate, epochs: int, n_train: int, n_val: int) -> dict:
    return {"base_model": {**models.describe(spec), "requested": spec.requested},
            "chat_template": {"name": template.spec.name, "fingerprint": template.fingerprint()},
            "tokenizer": {"vocab_size": template.tokenizer.get_vocab_size()},
            "train": {"path": str(Path(cfg.train).resolve()), "sha256": _sha256(cfg.train), "examples": n_train},
            "validation": {"path": str(Path(cfg.validation).resolve()), "sha256": _sha256(cfg.validation),
                           "examples": n_val} if cfg.validation else None,
            "hyperparameters": cfg.hyperparameters(epochs)}


def _check_resumable(out: Path, identity: dict) -> None:
    path = out / ck.RUN_FILE
    if not path.is_file():
        return
    prior = json.loads(path.read_text())
    same = lambda d: {k: d[k] for k in ("chat_template", "hyperparameters")} | {  # noqa: E731
        "base": d["base_model"]["sha256"] or d["base_model"]["name"], "train": d["train"]["sha256"],
        "val": (d["validation"] or {}).get("sha256")}
    if same(prior) != same(identity):
        diff = [k for k in same(prior) if same(prior)[k] != same(identity)[k]]
        raise ConfigError("--output", f"{out} holds a run with different settings ({', '.join(diff)}); it cannot be resumed",
                          hint="use a new --output directory, or delete this one to start over")


@dataclass
class _Plan:
    """What the data and config imply: rendered rows, step counts, checkpoint steps."""

    train_rows: list[Rendered]
    val_rows: list[Rendered]
    epochs: int
    steps_per_epoch: int
    exports: dict[int, int]  # {step: epoch} of exported checkpoints
    stats: dict  # Vertex supervisedTuningDataStats of the training file, for this many epochs

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch


def _prepare(cfg: TuningConfig, template: ChatTemplate, max_length: int, media: md.Policy | None = None) -> _Plan:
    """Validate (before any compute), render, and count steps."""
    limits = Limits(max_length, "--max-length" if cfg.max_length else "the base model's limit")
    if cfg.method == "preference":
        report = preference_data.validate(cfg.train, cfg.validation, template=template, limits=limits)
    else:
        report = validate(cfg.train, cfg.validation, template=template, media=media, limits=limits)
    if not report.valid:
        errors = [i for i in report.issues if i.severity == "error"]
        listed = "\n".join(f"  {i}" for i in errors[:10])
        raise TrainingError(f"the dataset has {sum(f.errors for f in report.files)} errors; nothing was trained:\n{listed}",
                            hint="`tunery validate` lists them all")
    if cfg.method == "preference":
        train_rows = pt.render_pairs(preference_data.read_pairs(cfg.train), template, max_length)
        val_rows = pt.render_pairs(preference_data.read_pairs(cfg.validation), template, max_length) if cfg.validation else []
    else:
        train_rows = _render_file(cfg.train, template, max_length)
        val_rows = _render_file(cfg.validation, template, max_length) if cfg.validation else []
    epochs = cfg.epochs or default_epochs(len(train_rows))
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    stats = dict(report.files[0].stats)
    stats["totalBillableTokenCount"] = stats.get("totalTokenCount", 0) * epochs
    if "totalTuningCharacterCount" in stats:
        stats["totalBillableCharacterCount"] = stats["totalTuningCharacterCount"] * epochs
    stats["tuningStepCount"] = steps_per_epoch * epochs
    return _Plan(train_rows, val_rows, epochs, steps_per_epoch,
                 ck.schedule(epochs, steps_per_epoch, cfg.export_last_checkpoint_only), stats)


def _train_step(model, optimizer, trainable, rows: list[Rendered], pad_id: int, runtime: Runtime, dist: Dist,
                step: int, recompute: memory.LayerRecompute | None = None, beta: float = 0.1) -> dict[str, float]:
    """One optimizer step on this rank's share of a batch; the loss is normalised by the global token count. Long
    batches recompute some layers' activations in the backward pass instead of keeping them (`recompute`).
    Preference pairs (tunery/train/preference.py): DPO's loss, normalised by the global pair count."""
    import torch

    if rows and isinstance(rows[0], pt.PairRows):
        return _preference_step(model, optimizer, trainable, rows, pad_id, runtime, dist, step, beta)
    mine = dist.shard(rows)
    if mine:
        ids, labels, media = _collate(mine, pad_id)
        loss_sum, correct, n = _forward(model, ids, labels, runtime, recompute, media=media)
    else:  # a short last batch can leave a rank with nothing
        loss_sum, correct, n = torch.zeros((), requires_grad=True), 0, 0
    total_sum, total_correct, total_n = dist.sum(loss_sum.item(), correct, n)
    if not math.isfinite(total_sum):
        raise TrainingError(f"the loss became {total_sum / max(total_n, 1)} at step {step + 1}; training stopped",
                            hint="lower the learning rate (--learning-rate-multiplier) and check the data")
    _update(loss_sum / total_n, trainable, optimizer, dist)
    return {mt.TRAIN_LOSS: total_sum / total_n, mt.TRAIN_ACCURACY: total_correct / total_n,
            mt.TRAIN_PREDICTIONS: int(total_n)}


def _update(loss, trainable, optimizer, dist: Dist) -> None:
    """Backward, gradients summed over ranks, one optimizer step."""
    loss.backward()
    dist.sum_grads(trainable)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _preference_step(model, optimizer, trainable, rows, pad_id: int, runtime: Runtime, dist: Dist, step: int,
                     beta: float) -> dict[str, float]:
    import torch

    mine = dist.shard(rows)
    if mine:
        total, sums = pt.loss(model, mine, pad_id, runtime, beta)
    else:
        total, sums = torch.zeros((), requires_grad=True), {"correct": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0}
    loss_sum, correct, margin, chosen, rejected, n = dist.sum(total.item(), sums["correct"], sums["margin"],
                                                              sums["chosen"], sums["rejected"], len(mine))
    if not math.isfinite(loss_sum):
        raise TrainingError(f"the loss became {loss_sum / max(n, 1)} at step {step + 1}; training stopped",
                            hint="lower the learning rate (--learning-rate-multiplier) or beta")
    _update(total / n, trainable, optimizer, dist)
    return {mt.TRAIN_LOSS: loss_sum / n, pt.TRAIN_REWARD_ACCURACY: correct / n, pt.TRAIN_REWARD_MARGIN: margin / n,
            pt.TRAIN_CHOSEN_LOGPS: chosen / n, pt.TRAIN_REJECTED_LOGPS: rejected / n, pt.TRAIN_PAIRS: int(n)}


def train(cfg: TuningConfig, on_event: Callable[[Event], None] | None = None) -> RunResult:
    """Run (or resume) one tuning job. Raises TuneryError subclasses for anything the user can fix.
    Under torchrun every rank runs this; rank 0 writes the run directory (holding its lock) and reports events."""
    dist = distributed.init()
    emit = (on_event or (lambda e: None)) if dist.is_main else (lambda e: None)
    out = Path(cfg.output)
    # 1. base model, template, data (validated before any compute)
    spec = models.resolve(cfg.base_model)
    template = models.load_template(spec)
    max_length = min(spec.max_tokens, cfg.max_length or spec.max_tokens)
    emit({"event": "validating"})
    roots = None if cfg.media_roots is None else [Path(r) for r in cfg.media_roots]  # None: the CLI, any path
    plan = _prepare(cfg, template, max_length, models.media_policy(spec, roots))
    emit({"event": "dataset", "stats": plan.stats})

    # 2. the run directory: fresh, resumed, or already finished
    identity = _identity(cfg, spec, template, plan.epochs, len(plan.train_rows), len(plan.val_rows))
    lock = locks.acquire(out / locks.LOCK_FILE, f"run directory {out}") if dist.is_main else None  # one writer
    try:
        return _train_locked(cfg, out, identity, spec, plan, template, dist, emit)
    finally:
        if lock is not None:
            locks.release(lock)


def _train_locked(cfg: TuningConfig, out: Path, identity: dict, spec, plan: _Plan, template: ChatTemplate, dist: Dist,
                  emit: Callable[[Event], None]) -> RunResult:
    """Steps 2 to 5 of train(), with the run directory's lock held."""
    import torch

    total = plan.total
    ids = ck.checkpoint_ids(plan.exports)  # {step: checkpoint id}, 1..K in Vertex cadence
    eval_every = max(1, math.ceil(total / EVALS_PER_RUN))
    # validation passes: evenly spread, and at every checkpoint so the best one can be chosen by its loss
    eval_steps = set(range(eval_every, total + 1, eval_every)) | {total} | set(plan.exports)
    if (done := _open_run_dir(out, identity, dist)) is not None:
        emit({"event": "already_complete", "steps": done.steps})
        return done

    # 3. model + LoRA + optimizer, restored from the last complete state if there is one
    recorded = json.loads((out / ck.RUN_FILE).read_text())["runtime"]  # measured when the run began, kept on resume
    runtime = Runtime(recorded["device"], None if recorded["precision"] == "float32" else recorded["precision"])
    torch.set_num_threads(recorded["threads"])
    allowance = threads.Allowance(recorded["threads"])
    base = models.load_model_fresh(spec)
    vision = _multimodal(base)  # a vision-language model runs as transformers built it (no text-only kernels)
    if not vision:
        attention.use_for_training(base)  # right-padded batches: causal attention without a mask, fastest kernel
    model = _attach_lora(base, cfg.adapter_size, cfg.seed, cfg.alpha, cfg.lora_targets).to(runtime.device)
    if runtime.autocast == "bfloat16" and not vision:
        _frozen_linear_weights_to(model, torch.bfloat16)
        memory.share_linear_inputs(model, torch.bfloat16)
        memory.embeddings_to(model, torch.bfloat16)
    memory.own_weights(model)  # releases the checkpoint file's map (its fp32 pages)
    if not vision:
        memory.recompute_gated_activation(model)
    lora.use_for_training(model)  # each LoRA linear one autograd node: no scaling multiply or extra add
    if cfg.init_adapter:
        _load_adapter_weights(model, Path(cfg.init_adapter), cfg)
    recompute = None if vision else memory.LayerRecompute(model)
    if cfg.method == "preference":  # DPO's reference: the model as tuning starts, before any resumed state
        model.eval()
        pt.set_reference(model, plan.train_rows + plan.val_rows, template.end_id, runtime, cfg.batch_size)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.peak_learning_rate, weight_decay=0.0)
    step, resumed, exported, meta = 0, None, [], {}
    if (state := ck.latest_state(out)) is not None:
        meta = ck.load_state(state, model, optimizer)
        step = resumed = meta["step"]
        exported = meta.get("checkpoints", [i for s, i in ids.items() if s <= step])
        log.info("resuming %s from step %d of %d", out, step, total)
    stopper = EarlyStop.restore(cfg.early_stopping_patience, meta.get("early_stopping"))
    if dist.is_main:
        ck.keep_checkpoints(out, exported)  # the ones written after this state are exported again, same ids
    log_ = mt.MetricsLog(out, step) if dist.is_main else None
    trained = open(out / TRAINED_LOG, "a", encoding="utf-8") if dist.is_main else None
    pad_id, lengths = template.end_id, [len(r.input_ids) for r in plan.train_rows]
    emit({"event": "start", "total_steps": total, "epochs": plan.epochs, "resumed_from": resumed,
          "examples": len(plan.train_rows), "device": runtime.device, "processes": dist.world,
          "precision": runtime.autocast or "float32"})

    # 4. the loop
    last_save = time.monotonic()
    checkpoints = [_ckpt_record(p) for p in ck.complete_checkpoints(out)]
    crash = lambda where: faults.point(out, where, step)  # noqa: E731  (fault injection; off outside tests)
    last = dict(checkpoints[-1]["metrics"]) if checkpoints else {}
    order: tuple[int, list[list[int]]] = (-1, [])
    try:
        while step < total and stopper.stopped is None:
            epoch, index = divmod(step, plan.steps_per_epoch)
            if order[0] != epoch:
                order = (epoch, batch_order(lengths, cfg.batch_size, cfg.seed, epoch))
            lr = _lr_at(step, total, cfg.peak_learning_rate, cfg.lr_schedule)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if (n := allowance.poll()) != torch.get_num_threads():  # fewer while the server generates beside us
                torch.set_num_threads(n)
            rows = [plan.train_rows[i] for i in order[1][index]]
            last = _train_step(model, optimizer, trainable, rows, pad_id, runtime, dist, step, recompute, cfg.beta)
            step += 1
            crash("step")
            stop = False
            if plan.val_rows and step in eval_steps:
                model.eval()
                last |= evaluate(model, plan.val_rows, cfg.batch_size, pad_id, runtime, dist, cfg.beta)
                model.train()
                stop = stopper.observe(step, last[mt.EVAL_LOSS])
            epoch_f = step / plan.steps_per_epoch
            emit({"event": "step", "step": step, "total_steps": total, "epoch": epoch_f, **last})
            if not dist.is_main:
                continue
            log_.write(step, epoch_f, last)
            trained.write(json.dumps({"step": step, "lr": lr, "pid": os.getpid(), "resumed_from": resumed,
                                      "threads": n}) + "\n")
            trained.flush()
            crash("metrics")
            if step in plan.exports or (stop and not (checkpoints and checkpoints[-1]["step"] == step)):
                # an early stop exports where it stopped, numbered after the checkpoints before it
                number = ids[step] if step in plan.exports else str(len(checkpoints) + 1)  # an id like theirs
                manifest = {**identity, "step": step, "epoch": plan.exports.get(step, math.ceil(epoch_f)),
                            "metrics": last,
                            "checkpoint_id": number}
                path = ck.save_checkpoint(out, number, model, manifest, lambda w: crash(f"checkpoint.{w}"))
                checkpoints.append(_ckpt_record(path))
                emit({"event": "checkpoint", **checkpoints[-1]})
            halt = stopping.STOP.is_set()  # a pause or a cancel: the state after this step, then out
            if step in plan.exports or step == total or stop or halt or \
                    time.monotonic() - last_save >= cfg.save_interval_seconds:
                # after the checkpoint, and naming it: a kill in between resumes before the export and redoes it
                ck.save_state(out, model, optimizer, step, {"epoch": epoch_f, "checkpoints": [c["checkpointId"] for c in checkpoints],
                                                            "early_stopping": stopper.state()},
                              lambda w: crash(f"state.{w}"))
                last_save = time.monotonic()
            if halt and step < total and not stop:
                log.info("%s: stopped on request at step %d of %d (state saved)", out, step, total)
                raise stopping.Stopped(f"stopped at step {step} of {total}")
            if stop:
                log.info("%s: stopped early at step %d of %d: %s", out, step, total, stopper.stopped["reason"])
                emit({"event": "stopped_early", **stopper.stopped})
    except torch.OutOfMemoryError as exc:
        raise TrainingError(f"out of memory at step {step + 1}", hint="lower --batch-size or --max-length") from exc
    finally:
        if log_ is not None:
            log_.close()
            trained.close()

    # 5. artifacts: the final adapter and the run manifest
    chosen, why = default_checkpoint(checkpoints) if dist.is_main else ({}, "")  # rank 0 alone exports
    default = {"checkpointId": chosen.get("checkpointId"), "step": chosen.get("step"), "reason": why}
    steps = stopper.stopped["step"] if stopper.stopped else total
    result = RunResult(out, steps, plan.epochs, last, checkpoints, resumed, default, stopper.stopped)
    if dist.is_main:
        final = Path(chosen["path"])  # the adapter served by default is the chosen checkpoint's
        ck.write_atomically(out / ck.ADAPTER_DIR, lambda tmp: _copy_adapter(final, tmp))
        ck.write_json(out / ck.MANIFEST, {**identity, "steps": steps, "epochs": plan.epochs, "metrics": last,
                                          "checkpoints": checkpoints, "adapter": str(out / ck.ADAPTER_DIR),
                                          "default_checkpoint": default, "early_stopping": stopper.stopped,
                                          "precision": runtime.autocast or "float32", "device": runtime.device,
                                          "threads": recorded["threads"], "processes": dist.world})
    dist.barrier()
    distributed.shutdown(dist)
    emit({"event": "done", "steps": steps})
    return result


def _open_run_dir(out: Path, identity: dict, dist: Dist) -> RunResult | None:
    """Check the directory may be (re)used; a finished run is returned as it is. Rank 0 prepares it and records
    the runtime (device, bf16 or fp32, threads) the first time: a resumed run keeps it rather than measuring afresh,
    since a different precision or thread count would not continue the same computation."""
    runtime = None
    if out.is_dir():
        _check_resumable(out, identity)
        if (out / ck.MANIFEST).is_file() and ck.is_complete(out / ck.ADAPTER_DIR):
            done = json.loads((out / ck.MANIFEST).read_text())
            return RunResult(out, done["steps"], done["epochs"], done["metrics"], done["checkpoints"],
                             default_checkpoint=done.get("default_checkpoint"), early_stopping=done.get("early_stopping"))
        if (out / ck.RUN_FILE).is_file():
            runtime = json.loads((out / ck.RUN_FILE).read_text()).get("runtime")
    if dist.is_main:
        if runtime is None:
            picked = pick()
            runtime = {"device": picked.device, "precision": picked.autocast or "float32",
                       "threads": threads.for_training(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))}
        out.mkdir(parents=True, exist_ok=True)
        ck.write_json(out / ck.RUN_FILE, {**identity, "runtime": runtime})
        ck.clean_incomplete(out)
    dist.barrier()
    return None


def _ckpt_record(path: Path) -> dict:
    m = json.loads((path / ck.MANIFEST).read_text())
    return {"checkpointId": m["checkpoint_id"], "epoch": m["epoch"], "step": m["step"], "path": str(path),
            "metrics": m["metrics"]}


def _copy_adapter(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.name != ck.COMPLETE:
            shutil.copy2(f, dst / f.name)
