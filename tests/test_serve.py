"""Serving: one base model, adapters switched per request under a lock, a bounded LRU, template checks."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from tunery import models
from tunery.config import TuningConfig
from tunery.data.schema import Turn
from tunery.device import Runtime
from tunery.serve.generate import GenerationConfig, Prompt
from tunery.serve.registry import Registry, TemplateMismatch
from tunery.train.engine import train
from tests.helpers import contents, write_jsonl


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Two adapters trained to answer differently, on the tiny model."""
    root = tmp_path_factory.mktemp("adapters")
    out = []
    for name, word in (("a", "apple"), ("b", "banana")):
        data = write_jsonl(root / f"{name}.jsonl", [contents(("user", f"Say it {i}"), ("model", f"{word} {word}")) for i in range(16)])
        train(TuningConfig(train=str(data), base_model=str(tiny_model_dir), output=str(root / name), epochs=6,
                           batch_size=4, learning_rate=3e-2, adapter_size=4))  # rank 4: what these figures were set for
        out.append(str(root / name / "adapter"))
    return out


PROMPT = Prompt((Turn("user", "Say it 3"),))
CONFIG = GenerationConfig(max_output_tokens=4)


def test_adapters_switch_per_request_and_concurrent_requests_do_not_mix(adapters, tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir))
    registry = Registry(runtime=Runtime("cpu", None))
    expected = {key: registry.generate(spec, key, [PROMPT], CONFIG)[0].text for key in (None, *adapters)}
    assert len(set(expected.values())) == 3  # base and both adapters answer differently
    results, errors = [], []

    def worker(i: int):
        key = (None, *adapters)[i % 3]
        try:
            for _ in range(3):
                results.append((key, registry.generate(spec, key, [PROMPT], CONFIG)[0].text))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 24
    assert all(text == expected[key] for key, text in results)


def test_lru_evicts_beyond_the_bound_and_reloads_correctly(adapters, tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir))
    registry = Registry(max_adapters=1, runtime=Runtime("cpu", None))
    first = registry.generate(spec, adapters[0], [PROMPT], CONFIG)[0].text
    registry.generate(spec, adapters[1], [PROMPT], CONFIG)
    assert registry.evictions == 1 and list(registry.base(spec).adapters) == [adapters[1]]
    assert registry.generate(spec, adapters[0], [PROMPT], CONFIG)[0].text == first
    assert registry.evictions == 2


def test_adapter_trained_with_another_template_is_refused(adapters, tiny_model_dir, tmp_path):
    spec = models.resolve(str(tiny_model_dir))
    copy = tmp_path / "other"
    shutil.copytree(adapters[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["chat_template"]["fingerprint"] = "0123456789abcdef"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    registry = Registry(runtime=Runtime("cpu", None))
    with pytest.raises(TemplateMismatch, match="trained with chat template 0123456789abcdef"):
        registry.generate(spec, str(copy), [PROMPT], CONFIG)
    stream = registry.stream(spec, str(copy), PROMPT, CONFIG)
    with pytest.raises(TemplateMismatch):  # before any text is sent
        next(stream)
    assert registry.generate(spec, adapters[0], [PROMPT], CONFIG)[0].text  # the model is free again


def test_a_failing_stream_raises_instead_of_hanging(adapters, tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir))
    registry = Registry(runtime=Runtime("cpu", None))
    bad = GenerationConfig(max_output_tokens=4, temperature=0.7, top_k=-3)  # generate() itself rejects top_k < 0
    with pytest.raises(ValueError):
        list(registry.stream(spec, adapters[0], PROMPT, bad))
    pieces = list(registry.stream(spec, adapters[0], PROMPT, GenerationConfig(max_output_tokens=4)))
    assert pieces[-1].output_tokens == 4  # the model is free again, and streaming works


def test_stop_sequences_and_max_tokens_set_the_finish_reason(adapters, tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir))
    registry = Registry(runtime=Runtime("cpu", None))
    full = registry.generate(spec, adapters[0], [PROMPT], GenerationConfig(max_output_tokens=12))[0]
    assert full.text.startswith("apple")
    stopped = registry.generate(spec, adapters[0], [PROMPT], GenerationConfig(max_output_tokens=12, stop_sequences=(" ",)))[0]
    assert stopped.text == "apple" and stopped.finish_reason == "STOP"
    short = registry.generate(spec, adapters[0], [PROMPT], GenerationConfig(max_output_tokens=1))[0]
    assert short.finish_reason == "MAX_TOKENS" and short.output_tokens == 1


def test_concurrent_requests_for_one_model_share_batches(adapters, tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir))
    registry = Registry(runtime=Runtime("cpu", None))
    alone = registry.generate(spec, adapters[1], [PROMPT], CONFIG)[0].text
    before = registry.batches
    barrier = threading.Barrier(8)
    texts = []

    def client():
        barrier.wait()
        texts.append(registry.generate(spec, adapters[1], [PROMPT], CONFIG)[0].text)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert texts == [alone] * 8  # batched greedy answers equal the single one (left padding handled)
    assert registry.batches - before < 8  # at least two requests rode in the same batch


def test_base_models_beyond_the_memory_bound_are_unloaded_least_recently_used_first(tiny_model_dir, tmp_path):
    """Two base models where the weights of one and a half fit: loading the second unloads the first (idle); asked
    for again, the first is loaded again and answers the same."""
    other = tmp_path / "copy-of-tiny"
    shutil.copytree(tiny_model_dir, other)
    first, second = models.resolve(str(tiny_model_dir)), models.resolve(str(other))
    assert first.name != second.name
    one = Registry(runtime=Runtime("cpu", None))
    size = one.base(first).weight_bytes
    assert size == sum(p.numel() * 4 for p in one.base(first).loaded.model.parameters())  # float32 weights
    registry = Registry(runtime=Runtime("cpu", None), max_base_bytes=size * 3 // 2)
    text = registry.generate(first, None, [PROMPT], CONFIG)[0].text
    assert registry.generate(second, None, [PROMPT], CONFIG)[0].text == text  # the same weights, copied
    assert registry.base_evictions == 1 and list(registry._bases) == [second.name]
    assert registry.generate(first, None, [PROMPT], CONFIG)[0].text == text
    assert registry.base_evictions == 2 and list(registry._bases) == [first.name]
