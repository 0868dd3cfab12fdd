"""The torch engine: transformers + PEFT. Adapters are named PEFT adapters on one PeftModel around the base; the
one a batch needs is activated (or all disabled, for the base model) before it generates."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tunery import models
from tunery.device import Runtime
from tunery.serve.generate import Generation, GenerationConfig, Prompt, generate
from tunery.text.chat_template import ChatTemplate


@dataclass
class _Loaded:
    model: Any  # the transformers model, wrapped in a PeftModel once an adapter is attached
    names: dict[str, str] = field(default_factory=dict)  # adapter dir -> PEFT adapter name


class TorchEngine:
    name = "torch"

    def load(self, spec: models.BaseModelSpec, runtime: Runtime) -> _Loaded:
        return _Loaded(models.load_model_fresh(spec).to(runtime.device).eval())

    def weight_bytes(self, loaded: _Loaded) -> int:
        return sum(p.numel() * p.element_size() for p in loaded.model.parameters())

    def set_threads(self, n: int) -> None:
        import torch

        torch.set_num_threads(n)  # the calling thread's OpenMP team: all model work runs on the compute thread

    def attach(self, loaded: _Loaded, adapter_dir: str) -> None:
        from peft import PeftModel

        name = f"a{abs(hash(adapter_dir)) % 10**12}"
        if not loaded.names and not hasattr(loaded.model, "peft_config"):
            with warnings.catch_warnings():  # peft calls a transformers method deprecated in 5.x (FutureWarning)
                warnings.simplefilter("ignore", FutureWarning)
                loaded.model = PeftModel.from_pretrained(loaded.model, adapter_dir, adapter_name=name).eval()
        else:
            loaded.model.load_adapter(adapter_dir, adapter_name=name)
        loaded.names[adapter_dir] = name

    def detach(self, loaded: _Loaded, adapter_dir: str) -> None:
        name = loaded.names.pop(adapter_dir, None)
        if name is None:
            return
        if loaded.names:
            loaded.model.set_adapter(next(iter(loaded.names.values())))  # the active adapter cannot be deleted
            loaded.model.delete_adapter(name)
        else:  # the last adapter: keep the plain model underneath
            loaded.model = loaded.model.unload() if hasattr(loaded.model, "unload") else loaded.model

    def close(self, loaded: _Loaded) -> None:
        """Nothing to free by hand: the weights go with the last reference."""

    def generate(self, loaded: _Loaded, template: ChatTemplate, adapter_dir: str | None, prompts: Sequence[Prompt],
                 config: GenerationConfig, runtime: Runtime, streamer: Any = None) -> list[Generation]:
        with self._activated(loaded, adapter_dir) as model:
            return generate(model, template, prompts, config, runtime, streamer=streamer)

    @contextmanager
    def _activated(self, loaded: _Loaded, adapter_dir: str | None):
        if adapter_dir is None:
            if loaded.names:
                with loaded.model.disable_adapter():
                    yield loaded.model
            else:
                yield loaded.model
            return
        loaded.model.set_adapter(loaded.names[adapter_dir])
        yield loaded.model
