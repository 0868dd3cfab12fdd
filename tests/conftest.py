"""Shared fixtures. The real default tokenizer everywhere; a tiny random model of the default architecture for
model tests; the real 135M model only in tests marked `slow`. No network: weights come from installed packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# One cache for the whole suite (tokenizer extraction and GGUF conversion happen once per machine, not per test).
os.environ.setdefault("TUNERY_HOME", str(REPO / ".cache" / "test-home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunery import models  # noqa: E402

# `make test` runs two xdist workers, a file at a time, in this order (`--no-loadscope-reorder`; xdist's own order
# puts files with the most tests first, which left the longest single tests to the end with one worker idle).
# Longest first: seconds per file measured with `pytest -n 2 --dist loadfile --durations=70` on the 2-core machine.
LONGEST_FIRST = ["test_examples.py",  # ~230 s
                 "test_resume.py",  # ~190
                 "test_train_real.py",  # ~140
                 "test_jobs_worker.py",  # ~140
                 "test_ray.py",  # ~135
                 "test_chaos.py",  # ~110
                 "test_fuzz.py",  # ~85
                 "test_api.py",  # ~70
                 "test_train.py", "test_vertex_sdk.py", "test_remote_datasets.py", "test_console.py"]  # 35-60


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(scope="session")
def spec() -> models.BaseModelSpec:
    return models.REGISTRY["smollm2-135m-instruct"]


@pytest.fixture(scope="session")
def template(spec):
    return models.load_template(spec)


@pytest.fixture(scope="session")
def hf_tokenizer(spec):
    return models.load_tokenizer(spec)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, spec, hf_tokenizer) -> Path:
    """A 2-layer random Llama with SmolLM2's shape conventions and real tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      # RMSNorm pins |h| near sqrt(64); with the default 0.02 init the largest logit gap is ~1.3,
                      # so no adapter could lower the loss much. A wider init lets a short run learn visibly.
                      initializer_range=0.2)
    out = tmp_path_factory.mktemp("tiny-smollm2")
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    hf_tokenizer.save_pretrained(out)
    return out
