"""Serving registry: each base model loaded once per process; tuned adapters attached on demand, a bounded LRU.

Requests for one base model take its lock, activate their adapter (or disable adapters for the base) and
generate, so concurrent requests for different tuned models can never mix weights. A CPU runs one generation
at a time anyway.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery import models
from tunery.device import Runtime, pick
from tunery.errors import TuneryError
from tunery.serve.generate import Generation, GenerationConfig, Prompt, generate
from tunery.text.chat_template import ChatTemplate

log = logging.getLogger("tunery")
DEFAULT_MAX_ADAPTERS = 8


class TemplateMismatch(TuneryError):
    """An adapter was trained with a different chat template than the one serving would use."""

    code = "failed_precondition"


@dataclass
class _Base:
    spec: models.BaseModelSpec
    model: Any  # the transformers model, wrapped in a PeftModel once an adapter is attached
    template: ChatTemplate
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter dir -> adapter name, LRU order


class Registry:
    def __init__(self, max_adapters: int = DEFAULT_MAX_ADAPTERS, runtime: Runtime | None = None) -> None:
        self.max_adapters = max_adapters
        self.runtime = runtime or pick()
        self._bases: dict[str, _Base] = {}
        self._guard = threading.Lock()
        self.evictions = 0

    def base(self, spec: models.BaseModelSpec) -> _Base:
        key = spec.name
        with self._guard:
            if key not in self._bases:
                log.info("loading base model %s for serving", key)
                model = models.load_model_fresh(spec).to(self.runtime.device).eval()
                self._bases[key] = _Base(spec, model, models.load_template(spec))
            return self._bases[key]

    def template(self, spec: models.BaseModelSpec) -> ChatTemplate:
        return models.load_template(spec)

    @contextmanager
    def _activated(self, base: _Base, adapter_dir: str | None) -> Iterator[Any]:
        """Hold the base's lock with the right adapter active (None: plain base weights)."""
        with base.lock:
            if adapter_dir is None:
                if base.adapters:
                    with base.model.disable_adapter():
                        yield base.model
                else:
                    yield base.model
                return
            name = self._attach(base, adapter_dir)
            base.model.set_adapter(name)
            yield base.model

    def _attach(self, base: _Base, adapter_dir: str) -> str:
        if adapter_dir in base.adapters:
            base.adapters.move_to_end(adapter_dir)
            return base.adapters[adapter_dir]
        _check_template(Path(adapter_dir), base.template)
        from peft import PeftModel

        name = f"a{abs(hash(adapter_dir)) % 10**12}"
        if not base.adapters and not hasattr(base.model, "peft_config"):
            base.model = PeftModel.from_pretrained(base.model, adapter_dir, adapter_name=name).eval()
        else:
            base.model.load_adapter(adapter_dir, adapter_name=name)
        base.adapters[adapter_dir] = name
        while len(base.adapters) > self.max_adapters:
            old_dir, old_name = base.adapters.popitem(last=False)
            base.model.set_adapter(name)  # the active adapter cannot be deleted
            base.model.delete_adapter(old_name)
            self.evictions += 1
            log.info("evicted adapter %s (LRU, %d loaded)", old_dir, self.max_adapters)
        return name

    def forget(self, adapter_dir: str) -> None:
        """Unload an adapter whose model was deleted."""
        for base in self._bases.values():
            with base.lock:
                name = base.adapters.pop(adapter_dir, None)
                if name is not None:
                    if base.adapters:
                        base.model.set_adapter(next(iter(base.adapters.values())))
                        base.model.delete_adapter(name)
                    else:  # the last adapter: keep the plain model underneath
                        base.model = base.model.unload() if hasattr(base.model, "unload") else base.model

    def generate(self, spec: models.BaseModelSpec, adapter_dir: str | None, prompts: Sequence[Prompt],
                 config: GenerationConfig) -> list[Generation]:
        base = self.base(spec)
        with self._activated(base, adapter_dir) as model:
            return generate(model, base.template, prompts, config, self.runtime)

    def stream(self, spec: models.BaseModelSpec, adapter_dir: str | None, prompt: Prompt,
               config: GenerationConfig) -> Iterator[str | Generation]:
        """Text pieces as they are generated, then the final Generation."""
        from transformers import TextIteratorStreamer

        base = self.base(spec)
        with self._activated(base, adapter_dir) as model:
            streamer = TextIteratorStreamer(_DecodeAdapter(base.template), skip_prompt=True)
            result: list[Generation] = []
            worker = threading.Thread(target=lambda: result.extend(
                generate(model, base.template, [prompt], config, self.runtime, streamer=streamer)))
            worker.start()
            for piece in streamer:
                if piece:
                    yield piece
            worker.join()
            yield result[0]


class _DecodeAdapter:
    """What TextIteratorStreamer needs from a tokenizer: decode(ids) without the end-of-turn marker."""

    def __init__(self, template: ChatTemplate) -> None:
        self.template = template

    def decode(self, ids, **_: Any) -> str:
        ids = [i for i in (ids.tolist() if hasattr(ids, "tolist") else ids) if i != self.template.end_id]
        return self.template.decode(ids)


def _check_template(adapter_dir: Path, template: ChatTemplate) -> None:
    manifest = adapter_dir / "manifest.json"
    if not manifest.is_file():
        return  # a plain PEFT adapter from elsewhere: nothing recorded to check
    recorded = json.loads(manifest.read_text()).get("chat_template", {}).get("fingerprint")
    if recorded and recorded != template.fingerprint():
        raise TemplateMismatch(f"{adapter_dir} was trained with chat template {recorded}, but serving uses "
                               f"{template.fingerprint()}; answers would not match training")
