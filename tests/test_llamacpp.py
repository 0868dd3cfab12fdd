"""The llama.cpp engine against the torch engine on the same weights: a tiny random Llama written as a real GGUF
(SmolLM2's tokenizer and metadata, f32 tensors), trained with tunery, served by both engines; and the GGUF export
loaded into llama.cpp directly. Both engines decode in float32 here (TUNERY_GGUF_DTYPE=f32), so greedy answers
agree token for token: the adapters are trained until their answer wins by a wide margin of logits, far more than
float32 summation order moves them (~1e-6 relative)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from tunery import models  # noqa: E402
from tunery.config import TuningConfig  # noqa: E402
from tunery.data.schema import Turn  # noqa: E402
from tunery.device import Runtime  # noqa: E402
from tunery.serve import gguf  # noqa: E402
from tunery.serve.generate import GenerationConfig, Prompt  # noqa: E402
from tunery.serve.registry import Registry  # noqa: E402
from tunery.train.engine import train  # noqa: E402
from tests.helpers import contents, write_jsonl  # noqa: E402

PROMPTS = [Prompt((Turn("user", f"Say it {i}"),)) for i in (3, 11)] + [Prompt((Turn("user", "Hello there"),), "Be brief.")]
GREEDY = GenerationConfig(max_output_tokens=6)


def write_tiny_gguf(hf_dir: Path, out: Path) -> Path:
    """The tiny HF Llama as an f32 GGUF the way llama.cpp's converter writes one: its tensor names, q/k rows
    permuted, tied embeddings; SmolLM2's tokenizer and metadata with the tiny model's hyperparameters."""
    import gguf as g
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    source = g.GGUFReader(models.gguf_path(models.resolve(None)))
    hp = {"llama.block_count": cfg["num_hidden_layers"], "llama.context_length": cfg["max_position_embeddings"],
          "llama.embedding_length": cfg["hidden_size"], "llama.feed_forward_length": cfg["intermediate_size"],
          "llama.attention.head_count": cfg["num_attention_heads"],
          "llama.attention.head_count_kv": cfg["num_key_value_heads"], "llama.rope.freq_base": float(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]),
          "llama.attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]),
          "llama.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"], "general.file_type": 0}
    writer = g.GGUFWriter(out, "llama")
    _copy_metadata(source, writer, hp)
    names = g.get_tensor_name_map(g.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    for key, w in load_file(str(hf_dir / "model.safetensors")).items():
        if key == "lm_head.weight":
            continue  # tied to token_embd
        name = names.get_name(key, try_suffixes=(".weight",))
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            w = gguf._permute(w, cfg["num_attention_heads"] if "attn_q" in name else cfg["num_key_value_heads"])
        writer.add_tensor(name, np.ascontiguousarray(w.astype(np.float32)))
    gguf._write(writer)
    return out


def _copy_metadata(reader: Any, writer: Any, replace: dict[str, Any]) -> None:
    import gguf

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = replace.get(field.name, field.contents())
        writer.add_key_value(field.name, value, kind, sub_type=sub)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir) -> models.BaseModelSpec:
    return models.resolve(str(write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")))


@pytest.fixture(scope="module", autouse=True)
def _f32(monkeypatch_module):
    monkeypatch_module.setenv("TUNERY_GGUF_DTYPE", "f32")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_gguf):
    """Two adapters trained on the tiny GGUF model to answer differently."""
    root = tmp_path_factory.mktemp("adapters")
    out = []
    for name, word in (("a", "apple"), ("b", "banana")):
        data = write_jsonl(root / f"{name}.jsonl", [contents(("user", f"Say it {i}"), ("model", f"{word} {word}")) for i in range(8)])
        train(TuningConfig(train=str(data), base_model=tiny_gguf.name, output=str(root / name), epochs=4,
                           batch_size=4, learning_rate=3e-2, adapter_size=4))
        out.append(str(root / name / "adapter"))
    return out


def test_the_tiny_gguf_loads_as_the_same_weights_tunery_trains_on(tiny_gguf, tiny_model_dir):
    """Our converter's q/k order is the one transformers undoes: the GGUF's weights come back exactly."""
    from safetensors.numpy import load_file

    back = load_file(str(models.model_dir(tiny_gguf) / "model.safetensors"))
    for key, w in load_file(str(tiny_model_dir / "model.safetensors")).items():
        if key in back:
            np.testing.assert_array_equal(back[key], w, err_msg=key)


def test_llamacpp_answers_as_torch_does_with_and_without_adapters(tiny_gguf, adapters):
    torch_reg = Registry(runtime=Runtime("cpu", None), engine="torch")
    cpp_reg = Registry(runtime=Runtime("cpu", None), engine="llamacpp")
    assert cpp_reg.engine_for(tiny_gguf).name == "llamacpp"
    answers = {}
    for key in (None, *adapters):
        want = torch_reg.generate(tiny_gguf, key, PROMPTS, GREEDY)
        got = cpp_reg.generate(tiny_gguf, key, PROMPTS, GREEDY)
        assert [(g.text, g.finish_reason, g.prompt_tokens, g.output_tokens) for g in got] == \
               [(g.text, g.finish_reason, g.prompt_tokens, g.output_tokens) for g in want], key
        answers[key] = got[0].text
    assert answers[adapters[0]].startswith("apple") and answers[adapters[1]].startswith("banana")
    assert answers[None] not in (answers[adapters[0]], answers[adapters[1]])
    # each adapter was written as a GGUF LoRA adapter when its checkpoint was saved, not on first use
    assert all((Path(a) / gguf.ADAPTER_FILE).is_file() for a in adapters)


def test_concurrent_requests_with_different_adapters_do_not_mix(tiny_gguf, adapters):
    registry = Registry(runtime=Runtime("cpu", None), engine="llamacpp", max_adapters=1)  # evicted and reloaded too
    keys = (None, *adapters)
    expected = {k: registry.generate(tiny_gguf, k, PROMPTS[:1], GREEDY)[0].text for k in keys}
    results, errors = [], []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                key = keys[i % 3]
                results.append((key, registry.generate(tiny_gguf, key, PROMPTS[:1], GREEDY)[0].text))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 18
    assert all(text == expected[key] for key, text in results)
    assert registry.evictions > 0


def test_a_request_joins_a_running_decode_and_returns_before_it_ends(tiny_gguf):
    """Continuous batching: a short request sent while a long answer streams is admitted between its decode steps
    (one serving loop for both) and answered long before the long one ends."""
    registry = Registry(runtime=Runtime("cpu", None), engine="llamacpp")
    long_config = GenerationConfig(max_output_tokens=400)
    alone = registry.generate(tiny_gguf, None, PROMPTS[:1], long_config)[0]
    assert alone.output_tokens == 400  # the random base model never says its end-of-turn token here
    loops = registry.batches
    events: list[str] = []
    short: list = []
    stream = registry.stream(tiny_gguf, None, PROMPTS[0], long_config)
    next(stream)  # the long answer is decoding
    worker = threading.Thread(target=lambda: (short.append(registry.generate(tiny_gguf, None, PROMPTS[1:2], GREEDY)[0]),
                                              events.append("short")))
    worker.start()
    *_, last = list(stream)
    events.append("long")
    worker.join()
    assert events == ["short", "long"] and registry.batches == loops + 1
    assert last.output_tokens == 400 and short[0].output_tokens <= GREEDY.max_output_tokens


def test_an_unload_gets_the_model_while_clients_keep_it_busy(tiny_gguf, adapters):
    """Deleting a tuned model unloads its adapter on the compute thread. Clients that keep the serving loop busy
    without a pause do not hold the unload off: after FAIR_SECONDS the loop stops admitting, hands the thread over,
    and starts again once the unload is done; every client request is still answered."""
    registry = Registry(runtime=Runtime("cpu", None), engine="llamacpp")
    registry.generate(tiny_gguf, adapters[0], PROMPTS[:1], GREEDY)
    stop, errors, answered = threading.Event(), [], []

    def client(tokens: int) -> None:
        # the random base model never ends an answer early, and answers of different lengths keep one sequence live
        # at every step, so the loop never runs dry by itself
        config = GenerationConfig(max_output_tokens=tokens)
        deadline = time.monotonic() + 120  # a bound on a hang: the unload below normally returns within seconds
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                out = registry.generate(tiny_gguf, None, PROMPTS[:1], config)[0].output_tokens
                answered.append(out == tokens)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(n,)) for n in (31, 43, 57)]
    for t in clients:
        t.start()
    while len(answered) < 3:  # the loop is serving
        time.sleep(0.05)
    registry.forget(adapters[0])
    clients_still_running = all(t.is_alive() for t in clients)
    before = len(answered)
    while len(answered) < before + 3 and any(t.is_alive() for t in clients):  # they are served after the unload
        time.sleep(0.05)
    stop.set()
    for t in clients:
        t.join()
    assert clients_still_running and not errors
    assert len(answered) >= before + 3 and all(answered) and adapters[0] not in registry.base(tiny_gguf).adapters
    assert registry.batches >= 3  # the first request, the loop that stepped aside, the loop after the unload


def test_an_evicted_model_is_freed_and_loaded_again_when_asked_for(tiny_gguf, tmp_path):
    """With room for one model's weights, serving a second model frees the first (llama.cpp memory included, on
    the compute thread); a thread that still holds the freed model's handle gets it loaded again, not freed memory."""
    import shutil

    other = models.resolve(str(shutil.copy(tiny_gguf.name, tmp_path / "other.gguf")))
    registry = Registry(runtime=Runtime("cpu", None), engine="llamacpp", max_base_bytes=1)
    first = registry.generate(tiny_gguf, None, PROMPTS[:1], GREEDY)[0].text
    held = registry.base(tiny_gguf)
    assert registry.generate(other, None, PROMPTS[:1], GREEDY)[0].text == first  # the same weights
    assert registry.base_evictions == 1 and held.closed and held.loaded.ctx is None
    assert registry.generate(tiny_gguf, None, PROMPTS[:1], GREEDY)[0].text == first
    assert registry.base_evictions == 2 and registry.base(tiny_gguf) is not held


def test_stream_pieces_join_to_the_answer_and_stop_sequences_cut(tiny_gguf, adapters):
    registry = Registry(runtime=Runtime("cpu", None), engine="llamacpp")
    full = registry.generate(tiny_gguf, adapters[1], PROMPTS[:1], GREEDY)[0]
    *pieces, last = list(registry.stream(tiny_gguf, adapters[1], PROMPTS[0], GREEDY))
    assert "".join(pieces) == full.text and last.text == full.text and len(pieces) >= 2
    cut = registry.generate(tiny_gguf, adapters[1], PROMPTS[:1], GenerationConfig(max_output_tokens=6, stop_sequences=(" ",)))[0]
    assert (cut.text, cut.finish_reason) == ("banana", "STOP")


def test_sampling_follows_the_seed(tiny_gguf):
    registry = Registry(runtime=Runtime("cpu", None), engine="llamacpp")
    config = GenerationConfig(max_output_tokens=8, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    first = [g.text for g in registry.generate(tiny_gguf, None, PROMPTS[:1] * 3, config)]
    again = [g.text for g in registry.generate(tiny_gguf, None, PROMPTS[:1] * 3, config)]
    other = [g.text for g in registry.generate(tiny_gguf, None, PROMPTS[:1] * 3, GenerationConfig(
        max_output_tokens=8, temperature=1.5, top_k=50, top_p=0.95, seed=8))]
    assert first == again  # the same seed: the same candidates
    assert len(set(first)) == 3  # candidates of one request differ from each other
    assert other != first


def test_gguf_export_loads_in_llama_cpp_and_answers_as_the_endpoint(tiny_gguf, adapters, tmp_path):
    from click.testing import CliRunner

    from tunery.cli import cli

    run = Path(adapters[0]).parent
    result = CliRunner().invoke(cli, ["export", str(run), "--gguf", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile
    assert "ADAPTER ./adapter.gguf" in (out / "Modelfile.adapter").read_text()

    endpoint = Registry(runtime=Runtime("cpu", None), engine="llamacpp").generate(tiny_gguf, adapters[0], PROMPTS[:1], GREEDY)[0]
    template = models.load_template(tiny_gguf)
    ids = template.render_prompt(PROMPTS[0].turns, PROMPTS[0].system)
    base = gguf.base_gguf(tiny_gguf, "f16")
    for kwargs in ({"model_path": str(out / "model.gguf")}, {"model_path": str(base), "lora_path": str(out / "adapter.gguf")}):
        llm = llama_cpp.Llama(n_ctx=256, verbose=False, **kwargs)
        tokens = []
        for tok in llm.generate(ids, temp=0.0, top_k=1):  # llama.cpp's own greedy loop, on the exported files
            if tok == template.end_id or len(tokens) == GREEDY.max_output_tokens:
                break
            tokens.append(tok)
        llm.close()
        assert template.decode(tokens) == endpoint.text, kwargs


def test_a_job_on_a_gguf_model_serves_on_llama_cpp_and_exports_through_rest(tiny_gguf, tmp_path):
    """The whole path through the real server and SDK: tune on a GGUF base, the endpoint answers on llama.cpp
    what the torch engine answers, and models.export writes GGUF files that llama.cpp loads."""
    import httpx
    from google.genai import types

    from tests.helpers import tunery_home
    from tests.test_api import LiveServer, sdk, wait_done

    rows = [contents(("user", f"Say it {i}"), ("model", "cherry cherry")) for i in range(16)]
    (tmp_path / "home").mkdir()
    # the conversions the other tests made (tokenizer, safetensors, GGUF at f32 and f16) serve this home too
    (tmp_path / "home" / "models").symlink_to(models.home() / "models", target_is_directory=True)
    with tunery_home(tmp_path / "home", Path(tiny_gguf.name)) as home, LiveServer(home) as server:
        write_jsonl(home / "train.jsonl", rows)
        client = sdk(server.url)
        job = wait_done(client, client.tunings.tune(
            base_model="gemini-2.0-flash-001", training_dataset=types.TuningDataset(gcs_uri=str(home / "train.jsonl")),
            config=types.CreateTuningJobConfig(epoch_count=4, adapter_size="ADAPTER_SIZE_FOUR",
                                               learning_rate_multiplier=15.0)).name)
        assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
        answer = client.models.generate_content(model=job.tuned_model.endpoint, contents="Say it 3",
                                                config={"temperature": 0.0, "max_output_tokens": 6})
        registry = server.services.registry
        assert registry.engine_for(tiny_gguf).name == "llamacpp"
        model = server.services.jobs.tuned_model(job.tuned_model.model)
        reference = Registry(runtime=Runtime("cpu", None), engine="torch").generate(
            tiny_gguf, model.adapter_dir, [Prompt((Turn("user", "Say it 3"),))], GenerationConfig(max_output_tokens=6))[0]
        assert answer.text == reference.text and answer.text.startswith("cherry")

        url = f"{server.url}/v1/{job.tuned_model.model}:export"
        bad = httpx.post(url, json={"outputConfig": {"exportFormatId": "tf-saved-model"}})
        assert bad.status_code == 400 and "outputConfig.exportFormatId" in bad.json()["error"]["message"]
        outside = httpx.post(url, json={"outputConfig": {"exportFormatId": "gguf",
                                                         "artifactDestination": {"outputUriPrefix": "/etc"}}})
        assert outside.status_code == 403, outside.text
        op = httpx.post(url, json={"outputConfig": {"exportFormatId": "gguf"}}, timeout=300).json()  # it writes ~40 MB
        assert op["done"] is True and op["response"]["@type"].endswith("ExportModelResponse")
        out = Path(op["metadata"]["outputInfo"]["artifactOutputUri"].removeprefix("file://"))
        assert out == home / "exports" / f"{model.id}-gguf"
        assert {"adapter.gguf", "model.gguf", "Modelfile", "Modelfile.adapter"} <= {p.name for p in out.iterdir()}
        again = httpx.post(url, json={"outputConfig": {"exportFormatId": "gguf"}}, timeout=300)
        assert again.status_code == 409, again.text
        assert httpx.get(f"{server.url}/v1/{op['name']}").json() == op
        llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), n_ctx=256, verbose=False)
        assert llm.n_vocab() == 49152
        llm.close()
