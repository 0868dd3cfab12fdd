"""Training on the tiny in-process model: loss falls, only LoRA parameters change, metrics are exact, checkpoint
cadence follows Vertex, a killed run resumes to the same result, and failures are loud and clean."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tunery import config, models
from tunery.config import TuningConfig, default_epochs
from tunery.device import Runtime
from tunery.errors import ConfigError, DatasetError, TrainingError
from tunery.text.batching import batch_order, collate
from tunery.train import attention
from tunery.train import checkpoints as ck
from tunery.train import metrics as mt
from tunery.train.engine import _attach_lora, _forward, _lr_at, train
from tests.helpers import contents, loss_and_grads, training_model, write_jsonl

REPO = Path(__file__).resolve().parents[1]
CPU = Runtime("cpu", None)


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    """24 training and 8 validation examples of a trivially learnable mapping."""
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}.")) for i, c in enumerate(colours * 4)]
    return write_jsonl(tmp_path / "train.jsonl", rows[:24]), write_jsonl(tmp_path / "val.jsonl", rows[24:])


def cfg(data, out, model_dir, **kw) -> TuningConfig:
    defaults = dict(train=str(data[0]), validation=str(data[1]), base_model=str(model_dir), output=str(out),
                    epochs=3, batch_size=4, learning_rate=5e-3)
    return TuningConfig(**(defaults | kw))


# ---------------------------------------------------------------- pure pieces

def test_checkpoint_cadence_follows_vertex():
    assert ck.schedule(3, 5) == {5: 1, 10: 2, 15: 3}
    assert list(ck.schedule(12, 2).values()) == [1, 2, 4, 5, 6, 7, 8, 10, 11, 12]  # ~10 evenly spaced + final
    assert list(ck.schedule(25, 1).values())[-1] == 25 and len(ck.schedule(25, 1)) == 10
    assert ck.schedule(12, 2, last_only=True) == {24: 12}


def test_default_epochs_rule():
    assert [default_epochs(n) for n in (10, 100, 240, 999, 1000, 50_000)] == [10, 10, 5, 2, 1, 1]


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [_lr_at(s, 40, 1.0) for s in range(40)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0  # 2 warmup steps (5% of 40)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] == pytest.approx(1 / 38)


def test_cosine_and_constant_schedules_after_the_same_warmup():
    cos, flat = [_lr_at(s, 40, 1.0, "cosine") for s in range(40)], [_lr_at(s, 40, 1.0, "constant") for s in range(40)]
    assert cos[:2] == flat[:2] == [0.5, 1.0] and flat[2:] == [1.0] * 38
    assert cos[1 + 19] == pytest.approx(0.5, abs=0.05)  # halfway down the decay: half the peak (linear is too)
    assert all(a >= b for a, b in zip(cos[1:], cos[2:])) and cos[-1] == pytest.approx(0.5 * (1 - math.cos(math.pi / 38)))
    linear = [_lr_at(s, 40, 1.0) for s in range(40)]
    assert cos[10] > linear[10] and cos[30] < linear[30]  # cosine stays high longer, then falls faster


def test_batch_order_is_deterministic_complete_and_length_grouped():
    lengths = [(i * 37) % 100 for i in range(100)]
    a, b = batch_order(lengths, 8, seed=1, epoch=2), batch_order(lengths, 8, seed=1, epoch=2)
    assert a == b and a != batch_order(lengths, 8, seed=1, epoch=3)
    assert sorted(i for batch in a for i in batch) == list(range(100)) and len(a) == 13
    spread = sum(max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in a) / len(a)
    assert spread < 15  # vs ~90 for random batches


@pytest.mark.parametrize("bad", [dict(adapter_size=3), dict(epochs=0), dict(epochs=-1), dict(batch_size=0),
                                 dict(learning_rate_multiplier=0), dict(max_length=2), dict(lora_alpha=0),
                                 dict(lora_alpha=2000), dict(lora_targets="embeddings"), dict(lr_schedule="step")])
def test_invalid_hyperparameters_are_rejected_naming_the_flag(bad):
    with pytest.raises(ConfigError) as exc:
        TuningConfig(train="t.jsonl", output="out", **bad)
    flag = "--" + next(iter(bad)).replace("_", "-")
    assert str(exc.value).startswith(flag)


# ---------------------------------------------------------------- loss and metrics, by hand

def test_loss_and_token_accuracy_match_a_plain_forward(template, tiny_model_dir):
    """Our loss/accuracy over supervised positions (training attention, right padding, no mask) equal a
    straightforward masked computation on full logits from the model's own SDPA forward, one example at a time."""
    spec = models.resolve(str(tiny_model_dir))
    ours = models.load_model_fresh(spec)
    attention.use_for_training(ours)
    ours = _attach_lora(ours, 4, 0).eval()
    model = _attach_lora(models.load_model_fresh(spec), 4, 0).eval()
    assert model.config._attn_implementation == "sdpa" and ours.config._attn_implementation == attention.NAME
    from tunery.data.schema import Example, Turn

    rows = template.render_batch([Example((Turn("user", "Hi there"), Turn("model", "Hello! How are you?"))),
                                  Example((Turn("user", "2+2"), Turn("model", "4")))])
    ids, labels = collate(rows, template.end_id)
    with torch.no_grad():
        loss_sum, correct, n = _forward(ours, ids, labels, CPU)
        expected_loss, expected_correct, expected_n = 0.0, 0, 0
        for r in rows:  # each example alone, unpadded, through the model's own forward
            x = torch.tensor([r.input_ids])
            y = torch.tensor([r.labels])
            logits = model(input_ids=x).logits[0, :-1]
            gold = y[0, 1:]
            sel = gold != -100
            expected_loss += torch.nn.functional.cross_entropy(logits[sel], gold[sel], reduction="sum").item()
            expected_correct += int((logits[sel].argmax(-1) == gold[sel]).sum())
            expected_n += int(sel.sum())
    assert n == expected_n == sum(r.num_supervised for r in rows)  # every supervised token is predicted once
    assert correct == expected_correct
    # fp32 sums of about 20 per-token losses, padded batch against one example at a time: n * eps = 20 * 1.2e-7
    # relative, with room for the attention's different reduction order
    assert float(loss_sum) == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize("length", [attention.MATMUL_MAX_LENGTH - 3, attention.MATMUL_MAX_LENGTH + 5])
@pytest.mark.parametrize("window", [None, 7])
def test_training_attention_equals_sdpa_in_value_and_gradient(length, window):
    """Grouped-query causal attention (optionally a sliding window) against torch's SDPA with an explicit mask;
    below the crossover length our matmul path runs, above it transformers' SDPA path does."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    q = torch.randn(2, 4, length, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, length, 16, requires_grad=True) for _ in range(2))
    out, _ = attention.causal_attention(SimpleNamespace(num_key_value_groups=2, is_causal=True), q, k, v, None,
                                        scaling=0.25, sliding_window=window)
    i = torch.arange(length)
    allowed = (i[None, :] <= i[:, None]) & ((i[None, :] > i[:, None] - window) if window else True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           attn_mask=allowed, scale=0.25).transpose(1, 2)
    assert out.shape == (2, length, 4, 16)
    # fp32 over up to 165 keys: another reduction order moves a sum by about n * eps = 165 * 1.2e-7 = 2e-5 of its
    # terms' size (outputs are O(1), the gradients of the squared sum O(10), hence their larger atol)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_training_attention_with_softcap_equals_autograd_of_the_formula():
    """Capped scores (Gemma 2 style) through our recomputing backward equal autograd of the plain formula."""
    from types import SimpleNamespace

    torch.manual_seed(1)
    q = torch.randn(2, 6, 40, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 40, 8, requires_grad=True) for _ in range(2))
    out, _ = attention.causal_attention(SimpleNamespace(), q, k, v, None, scaling=0.5, softcap=3.0, sliding_window=9)
    kk, vv = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
    scores = torch.tanh(q @ kk.transpose(-1, -2) * 0.5 / 3.0) * 3.0
    i = torch.arange(40)
    scores = scores.masked_fill((i[None, :] > i[:, None]) | (i[None, :] <= i[:, None] - 9), float("-inf"))
    ref = (torch.softmax(scores, -1) @ vv).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [attention.MATMUL_MAX_LENGTH - 3, attention.MATMUL_MAX_LENGTH + 5])
@pytest.mark.parametrize("window", [None, 7])
def test_packed_shared_prefix_attention_equals_each_row_attending_to_prefix_and_itself(length, window):
    """One packed row [prefix, row 1, row 2, row 3] with tunery_shared=(5, 3) gives, for every position, what SDPA
    gives on each row's own [prefix, row] sequence with a causal (and sliding-window) mask; the prefix's key and value
    gradients are the sums over the rows. Both the matmul path and the fused path (above the crossover) run."""
    from types import SimpleNamespace

    torch.manual_seed(3)
    prefix, rows = 5, 3
    total = prefix + rows * length
    q = torch.randn(1, 4, total, 16, requires_grad=True)
    k, v = (torch.randn(1, 2, total, 16, requires_grad=True) for _ in range(2))
    out, _ = attention.causal_attention(SimpleNamespace(), q, k, v, None, scaling=0.25, sliding_window=window,
                                        **{attention.SHARED: (prefix, rows)})
    n = prefix + length
    i = torch.arange(n)
    allowed = (i[None, :] <= i[:, None]) & ((i[None, :] > i[:, None] - window) if window else True)
    parts = []
    for r in range(rows):
        own = slice(prefix + r * length, prefix + (r + 1) * length)
        qq, kk, vv = (torch.cat((x[:, :, :prefix], x[:, :, own]), dim=2) for x in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(
            qq, kk.repeat_interleave(2, 1), vv.repeat_interleave(2, 1), attn_mask=allowed, scale=0.25).transpose(1, 2)
        parts += [ref[:, :prefix]] if r == 0 else []  # the prefix's own output, computed once
        parts.append(ref[:, prefix:])
    ref = torch.cat(parts, dim=1)
    assert out.shape == (1, total, 4, 16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_shared_prefix_is_the_common_start_that_predicts_nothing(monkeypatch):
    """The prefix ends where the rows first differ, or before the first position whose next token is supervised in
    any row; a single row, or too few tokens saved, shares nothing."""
    from tunery.text import batching

    ids = torch.tensor([[5, 6, 7, 8, 9, 1, 2, 2], [5, 6, 7, 8, 3, 3, 4, 2]])
    labels = torch.full_like(ids, -100)
    labels[:, 5:7] = ids[:, 5:7]
    monkeypatch.setattr(batching, "SHARED_PREFIX_MIN_TOKENS", 1)
    assert batching.shared_prefix(ids, labels) == 4  # position 4 differs
    labels[1, 3] = 8  # row 2 is supervised on token 3, which position 2 predicts
    assert batching.shared_prefix(ids, labels) == 2
    assert batching.shared_prefix(ids[:1], labels[:1]) == 0
    assert batching.shared_prefix(torch.tensor([[1, 5], [2, 5]]), torch.full((2, 2), -100)) == 0
    monkeypatch.setattr(batching, "SHARED_PREFIX_MIN_TOKENS", 3)
    assert batching.shared_prefix(ids, labels) == 0  # (2 - 1) rows x 2 tokens saved < 3


def test_batch_with_a_shared_prefix_gives_the_same_loss_and_gradients_as_without(template, tiny_model_dir):
    """_forward packs rows that start alike (here SmolLM2's default system prompt and a shared instruction) into one
    row with the prefix once; loss, accuracy, count and every LoRA gradient equal the unshared batch's, in fp32."""
    from tunery.data.schema import Example, Turn
    from tunery.text.batching import shared_prefix
    from tunery.train import lora

    model = training_model(models.resolve(str(tiny_model_dir)))
    lora.use_for_training(model)
    ask = "Answer in one word. "
    rendered = template.render_batch([Example((Turn("user", ask + q), Turn("model", a))) for q, a in
                                      (("Sky?", "Blue"), ("Grass colour?", "Green"), ("2+2?", "Four"))])
    ids, labels = collate(rendered, template.end_id)
    first_difference = next(i for i in range(len(rendered[0].input_ids))
                            if len({r.input_ids[i] for r in rendered}) > 1)
    assert shared_prefix(ids, labels) == first_difference > 25  # the system turn and the instruction

    whole, shared = (loss_and_grads(model, ids, labels, CPU, share_prefix=share) for share in (False, True))
    assert shared[0] == pytest.approx(whole[0], rel=1e-6) and shared[1:3] == whole[1:3]
    assert shared[3].keys() == whole[3].keys() and len(whole[3]) == 2 * 7 * 2
    # Each LoRA gradient element is an fp32 sum over the batch's token positions, and sharing the prefix regroups
    # that sum (three copies of the prefix become one). Reordering an n-term fp32 sum moves it by up to about
    # n * eps * the largest term, and an element's terms are bounded by the tensor's largest gradient; small
    # elements are cancellations of large terms, so the bound is absolute per tensor, not relative per element.
    # Measured: at most 5 eps * max|g| on one thread of an AVX2 host, against this bound of 43 eps * max|g|.
    eps = torch.finfo(torch.float32).eps
    for k in whole[3]:
        bound = ids.shape[1] * eps * whole[3][k].abs().max().item()
        torch.testing.assert_close(shared[3][k], whole[3][k], rtol=0, atol=bound)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_head_loss_equals_cross_entropy_of_full_logits_in_value_and_gradient(softcap):
    """linear_cross_entropy over more rows than one chunk (so the chunks' sums and the gradient's concatenation are
    exercised) equals cross_entropy(hidden @ weight.T) with autograd, and counts the same argmax hits."""
    from tunery.train.loss import chunk_rows, linear_cross_entropy

    assert chunk_rows(49_152) == 256 and chunk_rows(262_144) == 48 and chunk_rows(50) == 256
    torch.manual_seed(2)
    n, vocab = 256 + 37, 50
    hidden = torch.randn(n, 16, requires_grad=True)
    weight, gold = torch.randn(vocab, 16), torch.randint(0, vocab, (n,))
    loss, correct = linear_cross_entropy(hidden, weight, gold, torch.float32, softcap)
    grad, = torch.autograd.grad(loss * 0.5, hidden)
    plain = hidden @ weight.T
    if softcap:
        plain = torch.tanh(plain / softcap) * softcap
    ref = torch.nn.functional.cross_entropy(plain, gold, reduction="sum")
    ref_grad, = torch.autograd.grad(ref * 0.5, hidden)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
    assert correct == int((plain.argmax(-1) == gold).sum()) > 0


def test_only_lora_parameters_change(template, tiny_model_dir):
    model = _attach_lora(models.load_model_fresh(models.resolve(str(tiny_model_dir))), 4, 0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    from tunery.data.schema import Example, Turn

    ids, labels = collate(template.render_batch([Example((Turn("user", "a"), Turn("model", "b")))]), template.end_id)
    for _ in range(3):
        loss, _, n = _forward(model, ids, labels, CPU)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    lora = {k for k, _ in model.named_parameters() if "lora_" in k}
    assert changed and changed <= lora  # trained parameters moved...
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters() if k not in lora)  # ...frozen ones did not
    assert any("lora_B" in k for k in changed)


def test_recompute_budget_leaves_room_for_the_adapters_training_state(tiny_model_dir):
    """The step's budget holds the adapter's fp32 weights, gradients and AdamW moments (16 bytes a trainable
    parameter) before activations: a rank-16 adapter gets less room for activations than a rank-4 one, exactly its
    extra state, so it recomputes layers at a token count where rank 4 recomputes none."""
    from tunery.train import memory

    budgets, params = {}, {}
    for rank in (4, 16):
        model = _attach_lora(models.load_model_fresh(models.resolve(str(tiny_model_dir))), rank, 0)
        params[rank] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        budgets[rank] = memory.LayerRecompute(model)
    assert params[16] == 4 * params[4] > 0
    for rank, recompute in budgets.items():
        assert recompute.budget == memory.STEP_BUDGET - 16 * params[rank]
    per_token = budgets[4].per_token_layer * len(budgets[4].layers)  # every layer's activations for one token
    tokens = (budgets[16].budget // per_token) + 1  # one token past what rank 16 keeps in full
    assert tokens * per_token <= budgets[4].budget  # rank 4 still keeps it all
    assert budgets[4].layers_to_recompute(tokens) == 0 < budgets[16].layers_to_recompute(tokens)


@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_recomputed_layers_give_the_same_loss_and_gradients(template, tiny_model_dir, autocast):
    """memory.LayerRecompute: layers switched to recompute run their forward twice (once more in the backward pass)
    and the step's loss and every LoRA gradient equal the kept-activations step's; the training path's own layers
    (one-node LoRA, gated MLP, training attention, bf16 shared inputs) are in place."""
    from tunery.data.schema import Example, Turn
    from tunery.train import lora, memory

    runtime = Runtime("cpu", autocast)
    model = training_model(models.resolve(str(tiny_model_dir)))
    if autocast:
        memory.share_linear_inputs(model, torch.bfloat16)
    memory.recompute_gated_activation(model)
    lora.use_for_training(model)
    model.train()
    ids, labels = collate(template.render_batch([Example((Turn("user", "Hi there"), Turn("model", "Hello! How are you?"))),
                                                 Example((Turn("user", "2+2"), Turn("model", "4")))]), template.end_id)
    recompute = memory.LayerRecompute(model)
    calls = []
    recompute.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # inside the layer: seen on replay

    def step():
        calls.clear()
        loss, _, n = _forward(model, ids, labels, runtime)
        (loss / n).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.item(), grads, len(calls)

    assert recompute.set_for(ids.numel()) == 0  # a short batch keeps everything
    kept = step()
    recompute.budget = 1
    assert recompute.set_for(ids.numel()) == len(recompute.layers) == 2
    again = step()
    assert (kept[2], again[2]) == (1, 2)  # the first layer ran once, then once more in the backward pass
    assert again[0] == kept[0] and kept[1].keys() == again[1].keys() and len(kept[1]) == 2 * 7 * 2
    for k in kept[1]:
        torch.testing.assert_close(again[1][k], kept[1][k], rtol=0, atol=0)


# ---------------------------------------------------------------- whole runs

def test_a_run_learns_and_writes_vertex_artifacts(data, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    events = []
    result = train(cfg(data, out, tiny_model_dir, learning_rate=2e-2, epochs=4), events.append)
    records = mt.read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 25))  # 24 examples / 4 x 4 epochs
    first, last = records[0][mt.TRAIN_LOSS], records[-1][mt.TRAIN_LOSS]
    assert last < first * 0.6, (first, last)
    evals = [r for r in records if mt.EVAL_LOSS in r]
    assert evals[-1]["step"] == 24 and evals[-1][mt.EVAL_LOSS] < evals[0][mt.EVAL_LOSS]
    assert set(records[-1]) == {"step", "epoch", "time", mt.TRAIN_LOSS, mt.TRAIN_ACCURACY, mt.TRAIN_PREDICTIONS,
                                mt.EVAL_LOSS, mt.EVAL_ACCURACY, mt.EVAL_PREDICTIONS}
    assert records[-1][mt.EVAL_PREDICTIONS] == 8 * 5  # 8 validation answers: "It is <c>." = 4 tokens + <|im_end|>
    # checkpoints: one per epoch, PEFT layout, manifest with what the run needs to be reproduced
    assert [(c["checkpointId"], c["epoch"], c["step"]) for c in result.checkpoints] == [("1", 1, 6), ("2", 2, 12), ("3", 3, 18), ("4", 4, 24)]
    ckpt = Path(result.checkpoints[-1]["path"])
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "COMPLETE"} <= {p.name for p in ckpt.iterdir()}
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for key in ("base_model", "chat_template", "tokenizer", "hyperparameters", "train", "step", "epoch", "metrics"):
        assert key in manifest, key
    rank = config.DEFAULT_ADAPTER_SIZE  # the defaults, recorded
    assert manifest["hyperparameters"]["adapter_size"] == rank and manifest["hyperparameters"]["lora_alpha"] == 2 * rank
    assert len(manifest["train"]["sha256"]) == 64 and manifest["chat_template"]["name"] == "chatml"
    run = json.loads((out / "manifest.json").read_text())
    assert run["steps"] == 24 and ck.is_complete(out / "adapter") and list((out / "events").iterdir())
    assert [e["event"] for e in events][:4] == ["validating", "dataset", "start", "step"] and events[-1]["event"] == "done"
    stats = events[1]["stats"]
    assert stats["tuningDatasetExampleCount"] == 24 and stats["tuningStepCount"] == 24
    assert stats["totalBillableTokenCount"] == 4 * stats["totalTokenCount"]
    # the adapter loads with plain peft and changes the model's outputs
    from peft import PeftModel

    base = models.load_model_fresh(models.resolve(str(tiny_model_dir)))
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = base(input_ids=x).logits
        tuned = PeftModel.from_pretrained(base, str(out / "adapter"))(input_ids=x).logits
    assert not torch.allclose(plain, tuned)


def test_lora_alpha_targets_and_schedule_reach_the_adapter_and_bind_a_continuation(data, tmp_path, tiny_model_dir):
    from safetensors import safe_open

    out = tmp_path / "run"
    train(cfg(data, out, tiny_model_dir, epochs=1, lora_targets="attention", lora_alpha=3, lr_schedule="constant"))
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"} and adapter["lora_alpha"] == 3
    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as f:
        layers = {key.split(".")[-3] for key in f.keys()}
    assert layers == {"q_proj", "k_proj", "v_proj", "o_proj"}  # no adapter on the MLP
    hp = json.loads((out / "run.json").read_text())["hyperparameters"]
    assert (hp["lora_targets"], hp["lora_alpha"], hp["lr_schedule"]) == ("attention", 3, "constant")
    lrs = [json.loads(line)["lr"] for line in (out / "trained.jsonl").read_text().splitlines()]
    assert lrs == [5e-3] * 6  # 1 warmup step of 6 reaches the peak at once; constant after it
    assert ck.adapter_settings(out / "adapter") == {"adapter_size": config.DEFAULT_ADAPTER_SIZE, "lora_alpha": 3,
                                                   "lora_targets": "attention"}
    with pytest.raises(ConfigError) as exc:  # continuing from it with another layout would load half an adapter
        train(cfg(data, tmp_path / "next", tiny_model_dir, epochs=1, init_adapter=str(out / "adapter"), lora_alpha=3))
    assert str(exc.value).startswith("--lora-targets: expected the pre-tuned adapter's attention, found all-linear")
    train(cfg(data, tmp_path / "next2", tiny_model_dir, epochs=1, init_adapter=str(out / "adapter"), lora_alpha=3,
              lora_targets="attention"))


def test_lora_targets_a_model_does_not_have_are_a_config_error():
    class Other(torch.nn.Module):  # an architecture whose layers are not named q_proj, ..., down_proj
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError) as exc:
        _attach_lora(Other(), 4, 0, targets="attention")
    assert str(exc.value).startswith("--lora-targets: 'attention' names layers this base model does not have")


def test_twelve_epochs_keep_about_ten_checkpoints(data, tmp_path, tiny_model_dir):
    small = write_jsonl(tmp_path / "four.jsonl", [json.loads(line) for line in data[0].read_text().splitlines()[:4]])
    result = train(cfg((small, data[1]), tmp_path / "run", tiny_model_dir, epochs=12, validation=None))
    assert [c["epoch"] for c in result.checkpoints] == [1, 2, 4, 5, 6, 7, 8, 10, 11, 12]
    last_only = train(cfg((small, data[1]), tmp_path / "run2", tiny_model_dir, epochs=12, validation=None,
                          export_last_checkpoint_only=True))
    assert [(c["epoch"], c["step"]) for c in last_only.checkpoints] == [(12, 12)]


def test_merged_export_equals_base_plus_adapter(data, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    train(cfg(data, out, tiny_model_dir, epochs=1))
    merged = ck.export_merged(out / "adapter", tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(merged)(input_ids=x).logits
        base = models.load_model_fresh(models.resolve(str(tiny_model_dir)))
        b = PeftModel.from_pretrained(base, str(out / "adapter"))(input_ids=x).logits
    # fp32 logits of O(1): x(W + BA) against xW + (xB)A differ by rounding, a few eps of the largest logit
    assert torch.allclose(a, b, atol=1e-5)


def _tune_cmd(data, out, model_dir) -> list[str]:
    return [sys.executable, "-m", "tunery.cli", "tune", "--local", "--train", str(data[0]), "--base-model", str(model_dir),
            "--epochs", "8", "--batch-size", "4", "--learning-rate", "5e-3", "--save-interval-seconds", "0",
            "--output", str(out)]


def test_kill_dash_nine_then_rerun_resumes_to_the_same_result(data, tmp_path, tiny_model_dir, monkeypatch):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_tune_cmd(data, out, tiny_model_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(mt.read_metrics(out) if (out / "metrics.jsonl").exists() else []) < 14:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(mt.read_metrics(out))
    assert 14 <= killed_at < 48 and not (out / "manifest.json").exists()
    state = ck.latest_state(out)
    assert state is not None

    rerun = subprocess.run(_tune_cmd(data, out, tiny_model_dir), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from step" in rerun.stderr
    assert "%|" not in rerun.stderr and "it/s]" not in rerun.stderr  # stderr is a pipe: no progress bars in the log
    records = mt.read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 49))  # 24/4 x 8 epochs, each step exactly once
    assert json.loads((out / "manifest.json").read_text())["steps"] == 48

    straight = tmp_path / "straight"  # uninterrupted, in the precision the killed run measured when it began
    from tunery import device

    monkeypatch.setenv("TUNERY_PRECISION", json.loads((out / "run.json").read_text())["runtime"]["precision"])
    device.pick.cache_clear()
    try:
        train(TuningConfig(train=str(data[0]), base_model=str(tiny_model_dir), epochs=8, batch_size=4,
                           learning_rate=5e-3, output=str(straight)))
    finally:
        device.pick.cache_clear()
    from safetensors.torch import load_file

    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert mt.read_metrics(straight)[-1][mt.TRAIN_LOSS] == pytest.approx(records[-1][mt.TRAIN_LOSS], rel=1e-5)


def test_rerun_of_a_finished_run_does_nothing(data, tmp_path, tiny_model_dir):
    c = cfg(data, tmp_path / "run", tiny_model_dir, epochs=1)
    train(c)
    events = []
    again = train(c, events.append)
    assert again.steps == 6 and [e["event"] for e in events] == ["validating", "dataset", "already_complete"]


def test_resume_with_different_settings_is_refused(data, tmp_path, tiny_model_dir):
    train(cfg(data, tmp_path / "run", tiny_model_dir, epochs=1))
    with pytest.raises(ConfigError, match="different settings .*hyperparameters"):
        train(cfg(data, tmp_path / "run", tiny_model_dir, epochs=2))


def test_incomplete_state_directories_are_ignored(data, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    train(cfg(data, out, tiny_model_dir, epochs=1))
    (out / "manifest.json").unlink()
    shutil.rmtree(out / "adapter")
    fake = out / "state-00009999"
    fake.mkdir()
    (fake / "state.json").write_text("{half written")
    events = []
    train(cfg(data, out, tiny_model_dir, epochs=1), events.append)
    start = next(e for e in events if e["event"] == "start")
    assert start["resumed_from"] == 6 and not fake.exists()


def test_non_finite_loss_stops_the_run_naming_the_step(data, tmp_path, tiny_model_dir):
    broken = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, broken)
    from safetensors.torch import load_file, save_file

    weights = load_file(broken / "model.safetensors")
    norm = next(k for k in weights if k.endswith("norm.weight"))
    weights[norm] = torch.full_like(weights[norm], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train(cfg(data, out, broken))
    assert not (out / "manifest.json").exists() and not (out / "adapter").exists()
    assert ck.complete_checkpoints(out) == [] and ck.latest_state(out) is None


def test_invalid_dataset_fails_before_any_compute(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [contents(("user", "q"), ("model", "a")), contents(("user", "q"))])
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"bad.jsonl:2 /contents: error \[no_model_turn\]"):
        train(TuningConfig(train=str(bad), base_model=str(tiny_model_dir), output=str(out)))
    assert not out.exists()
    with pytest.raises(DatasetError, match="file not found"):
        train(TuningConfig(train=str(tmp_path / "missing.jsonl"), base_model=str(tiny_model_dir), output=str(out)))


def test_cli_reports_bad_flags_before_any_compute(tmp_path, data):
    for args, message in ((["--adapter-size", "3"], "--adapter-size: expected one of 1, 2, 4, 8, 16, found 3"),
                          (["--epochs", "-2"], "--epochs: expected a whole number from 1 to 100, found -2")):
        proc = subprocess.run([sys.executable, "-m", "tunery.cli", "tune", "--local", "--train", str(data[0]),
                               "--output", str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr
        assert not (tmp_path / "o").exists()


def test_two_process_data_parallel_run_matches_one_process(data, tmp_path, tiny_model_dir):
    """torchrun with 2 CPU processes (gloo): each rank takes half of every batch and gradients are summed, so the
    result equals the single-process run (up to float reassociation). Rank 0 alone writes the run directory."""
    args = ["--train", str(data[0]), "--base-model", str(tiny_model_dir), "--epochs", "2", "--batch-size", "4",
            "--learning-rate", "5e-3"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tunery.cli", "--", "tune", "--local", *args, "--output", str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(TuningConfig(train=str(data[0]), base_model=str(tiny_model_dir), epochs=2, batch_size=4,
                                learning_rate=5e-3, output=str(tmp_path / "one")))
    ddp_records, one_records = mt.read_metrics(tmp_path / "ddp"), mt.read_metrics(tmp_path / "one")
    assert [r["step"] for r in ddp_records] == [r["step"] for r in one_records] == list(range(1, 13))
    assert [r[mt.TRAIN_PREDICTIONS] for r in ddp_records] == [r[mt.TRAIN_PREDICTIONS] for r in one_records]
    for a, b in zip(ddp_records, one_records):
        assert a[mt.TRAIN_LOSS] == pytest.approx(b[mt.TRAIN_LOSS], rel=2e-3)
    assert json.loads((tmp_path / "ddp" / "manifest.json").read_text())["processes"] == 2
    from safetensors.torch import load_file

    a = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    b = load_file(single.output / "adapter" / "adapter_model.safetensors")
    # bf16 autocast noise, amplified by Adam's per-parameter normalisation, leaves ~0.4% relative difference; a
    # missing gradient sum would leave each rank stepping on half-batch gradients, far from the single run
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm() / torch.cat([b[k].flatten() for k in a]).norm()
    assert diff < 1e-2, float(diff)


def test_lean_rms_norm_matches_transformers_in_value_and_gradient():
    """The norm that keeps its input in bf16 (tunery/train/memory.py) against LlamaRMSNorm through autograd: the
    same output, and a gradient within bf16's rounding of the kept input."""
    from types import MethodType

    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from tunery.train import memory

    torch.manual_seed(0)
    ref, ours = LlamaRMSNorm(64, eps=1e-5), LlamaRMSNorm(64, eps=1e-5)
    ref.weight.data = ours.weight.data = torch.rand(64) + 0.5
    ours.forward, ours.saved_dtype = MethodType(memory._rms_norm_forward, ours), torch.bfloat16
    x = (torch.randn(3, 7, 64) * 4).requires_grad_()
    g = torch.randn(3, 7, 64)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)  # outside autocast: fp32 out, identical
    (gx,) = torch.autograd.grad(ours(x), x, g)
    (rx,) = torch.autograd.grad(ref(x), x, g)
    torch.testing.assert_close(gx, rx, rtol=2e-2, atol=2e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).dtype == torch.bfloat16


@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_linear_matches_peft_in_value_and_gradient(bias):
    """tunery/train/lora.py's one-node LoRA layer against PEFT's own forward through autograd, in fp32 (tight) and
    under bf16 autocast (within bf16 rounding): output, input gradient and the gradients of A and B."""
    import copy

    from peft import LoraConfig, get_peft_model

    from tunery.train import lora

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40, bias=bias))
    ref = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    for p in ref.parameters():  # B starts at zero; make the LoRA path count
        if p.requires_grad:
            p.data.normal_()
    ours = copy.deepcopy(ref)
    assert lora.use_for_training(ours) == 1
    x = torch.randn(3, 5, 24)
    g = torch.randn(3, 5, 40)

    def run(model, autocast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = model(xi)
        params = [p for p in model.parameters() if p.requires_grad]
        return (y, *torch.autograd.grad(y, [xi, *params], g.to(y.dtype)))

    for autocast, tol in ((False, 1e-5), (True, 3e-2)):
        got, want = run(ours, autocast), run(ref, autocast)
        assert [t.dtype for t in got] == [t.dtype for t in want]
        for a, b in zip(got, want):
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.abs().max().item())
