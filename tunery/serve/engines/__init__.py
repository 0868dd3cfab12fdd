"""Serving engines: what loads a base model, attaches tuned adapters and generates. The registry
(tunery/serve/registry.py) owns everything else: which models are loaded, the request queue, batching, the compute
thread, the adapter LRU.

- `llamacpp`: llama.cpp through llama-cpp-python, the base model as a GGUF at full precision and each adapter as a
  GGUF LoRA adapter (tunery/serve/gguf.py); the CPU default when installed.
- `torch`: transformers + PEFT; for CUDA, for models llama.cpp cannot serve (local Hugging Face directories), and
  the reference the llama.cpp engine's answers are checked against.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

from tunery import models
from tunery.device import Runtime
from tunery.errors import TuneryError
from tunery.serve.generate import Generation, GenerationConfig, Prompt
from tunery.text.chat_template import ChatTemplate

log = logging.getLogger("tunery")
ENGINES = ("llamacpp", "torch")


class Engine(Protocol):
    name: str

    def load(self, spec: models.BaseModelSpec, runtime: Runtime) -> Any:
        """The base model, loaded (what the other calls take as `loaded`)."""

    def weight_bytes(self, loaded: Any) -> int:
        """Bytes of weights the loaded model holds (the registry keeps loaded models under a byte budget)."""

    def attach(self, loaded: Any, adapter_dir: str) -> Any:
        """Load a tuned adapter beside the base weights (the registry bounds how many stay loaded)."""

    def detach(self, loaded: Any, adapter_dir: str) -> Any:
        """Unload an adapter."""

    def close(self, loaded: Any) -> None:
        """Free the model (the registry evicted it; nothing uses it any more)."""

    def set_threads(self, n: int) -> None:
        """Compute threads for what follows (fewer while jobs train)."""

    def generate(self, loaded: Any, template: ChatTemplate, adapter_dir: str | None, prompts: Sequence[Prompt],
                 config: GenerationConfig, runtime: Runtime, streamer: Any = None) -> list[Generation]:
        """One answer per prompt, the adapter active (None: the base weights). A streamer (one prompt) gets the
        prompt's ids, then each new token (transformers' streamer protocol: put(ids), end())."""


class EngineUnavailable(TuneryError):
    code = "failed_precondition"


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def choose(name: str | None, runtime: Runtime) -> str:
    """The engine a server uses: the one named (or $TUNERY_ENGINE), else llama.cpp on a CPU when installed, else
    torch."""
    name = name if name not in (None, "auto") else os.environ.get("TUNERY_ENGINE") or None
    if name is None or name == "auto":
        return "llamacpp" if runtime.device == "cpu" and llamacpp_installed() else "torch"
    if name not in ENGINES:
        raise EngineUnavailable(f"engine {name!r}: expected one of auto, {', '.join(ENGINES)}")
    if name == "llamacpp" and not llamacpp_installed():
        raise EngineUnavailable("engine llamacpp: llama-cpp-python is not installed",
                                hint="make install builds it; or pip install llama-cpp-python")
    return name


def make(name: str) -> Engine:
    if name == "llamacpp":
        from tunery.serve.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine()
    from tunery.serve.engines.torch_engine import TorchEngine

    return TorchEngine()
