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
MACHINE_CORES = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else set()


def _one_core_per_worker() -> None:
    """`make test` runs pytest-xdist workers in a multiple of the cores: each worker, and every process it starts,
    gets one core (as `taskset` would), before torch is loaded. tunery sizes its thread pools from the
    affinity mask (tunery/threads.py), so the two workers' torch processes no longer oversubscribe the cores and
    wait at each other's barriers: the suite's CPU time fell by a fifth (measured 2026-11-22; `git log -p docs/benchmarks.md`)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if MACHINE_CORES and worker.startswith("gw") and count and int(count) % len(MACHINE_CORES) == 0:
        os.sched_setaffinity(0, {sorted(MACHINE_CORES)[int(worker[2:]) % len(MACHINE_CORES)]})


_one_core_per_worker()


# The costliest files first, the rest in name order: CPU-seconds of each file run alone (`pytest FILE`, /proc/stat;
# a 2-core AVX2 host, 2026-12-07), largest first, so the short files fill the end and neither worker is left alone
# with a long one. The Makefile passes --no-loadscope-reorder, so xdist hands out files in this order instead of
# "most tests first".
LONGEST_FIRST = ["test_ray.py", "test_train_real.py", "test_examples.py", "test_preference.py", "test_console.py",
                 "test_chaos.py", "test_train.py", "test_jobs_worker.py", "test_resume.py", "test_multimodal.py",
                 "test_api.py", "test_fuzz.py", "test_threads.py", "test_llamacpp.py", "test_api_limits.py",
                 "test_vertex_sdk.py", "test_selection.py", "test_openai_api.py", "test_remote_datasets.py",
                 "test_zygote.py", "test_jobs_reliability.py", "test_pause.py", "test_quality_bench.py",
                 "test_job_service.py", "test_cli_client.py", "test_eval.py", "test_deprecations.py", "test_serve.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="module", autouse=True)
def _all_cores_for_many_processes(request):
    """A module marked `all_cores` (a Ray cluster; a server with three jobs and a chaos monkey) runs many processes
    at once: they get every core back for that module (on one core the chaos test took 175 s instead of 114). Each
    of them trains on one thread (TUNERY_THREADS), so the OS can place it on whichever core is free: a team of two
    threads sharing a core with the other worker's test would wait at every OpenMP barrier (tunery/threads.py)."""
    if request.node.get_closest_marker("all_cores") is None or not MACHINE_CORES:
        yield
        return
    mine, threads = os.sched_getaffinity(0), os.environ.get("TUNERY_THREADS")
    os.sched_setaffinity(0, MACHINE_CORES)
    os.environ["TUNERY_THREADS"] = "1"
    yield
    os.sched_setaffinity(0, mine)
    if threads is None:
        os.environ.pop("TUNERY_THREADS", None)
    else:
        os.environ["TUNERY_THREADS"] = threads


from tunery import models  # noqa: E402


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
