"""Serving registry: each base model loaded once per process; tuned adapters attached on demand, a bounded LRU.
An engine (tunery/serve/engines) does the model work: llama.cpp on a CPU where installed, else torch.

Concurrent requests for one base model queue up. With llama.cpp (an engine with `serve`), one loop on the compute
thread serves the queue with continuous batching: the oldest request's adapter is set, and queued requests for it
join the running decode between steps, each returning as soon as its own answers are done. With torch, whichever
thread finds the model idle takes the oldest request and every queued request with the same adapter and
generation config (up to MAX_BATCH prompts), activates that adapter (or disables adapters, for the base model) and
generates them as one batch. Weights are never mixed between requests, and concurrent clients share the decode:
on a CPU, 8 prompts decoded together cost far less than 8 one after the other.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery import models
from tunery.device import Runtime, pick
from tunery.errors import TuneryError
from tunery.serve import engines
from tunery.serve.generate import Generation, GenerationConfig, Prompt
from tunery.text.chat_template import ChatTemplate

log = logging.getLogger("tunery")
DEFAULT_MAX_ADAPTERS = 8
MAX_BATCH = 16  # prompts generated together
FAIR_SECONDS = 2.0  # a continuous-batching loop admits new requests this long while other work waits for its thread
_IMPORT_LOCK = threading.Lock()


class TemplateMismatch(TuneryError):
    """An adapter was trained with a different chat template than the one serving would use."""

    code = "failed_precondition"


@dataclass
class _Pending:
    adapter: str | None
    prompts: list[Prompt]
    config: GenerationConfig
    streamer: Any = None  # a stream's: gets the prompt's ids, then each token (continuous engines only)
    result: list[Generation] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Base:
    spec: models.BaseModelSpec
    engine: engines.Engine
    loaded: Any  # what the engine loaded
    template: ChatTemplate
    weight_bytes: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    busy: bool = False  # a thread is using the model (generating, streaming, attaching, evicting)
    queue: list[_Pending] = field(default_factory=list)
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter dirs attached, LRU order
    exclusive_waiting: int = 0  # threads waiting to hold the model alone (an unload, a torch stream)
    stepped_aside: bool = False  # the serving loop stopped admitting so that other work gets the compute thread
    closed: bool = False  # evicted and freed: a thread that still holds it gets the model again


class Registry:
    """All model work (the precision measurement, loading, adapters, generation) runs on one long-lived compute
    thread, whichever request thread asks. With libgomp, every thread that runs torch ops gets its own OpenMP
    team, and once there are more team threads than cores, idle teams stop spinning and every parallel region
    pays a wake-up: greedy decoding ran 1.5x slower on a server's request threads than on a single thread."""

    def __init__(self, max_adapters: int = DEFAULT_MAX_ADAPTERS, runtime: Runtime | None = None,
                 threads: Callable[[], int] | None = None, max_base_bytes: int | None = None,
                 engine: str | None = None) -> None:
        self.max_adapters = max_adapters
        self._engine_name = engine  # None or "auto": chosen by what is installed and the device
        self._engines: dict[str, engines.Engine] = {}
        # weights of loaded base models kept at most (LRU; a model in use is never dropped): half the RAM by default
        self.max_base_bytes = max_base_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        self._threads = threads  # how many compute threads generation may use now (fewer while jobs train)
        self._threads_set = 0
        self._runtime = runtime
        self._bases: OrderedDict[str, _Base] = OrderedDict()  # LRU order
        self._loading: dict[str, threading.Lock] = {}  # one per model being loaded: others' loads do not wait
        self._guard = threading.Lock()
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-compute")
        self._compute_thread: threading.Thread | None = None
        self._submitted = 0  # calls queued for the compute thread and not yet started there
        self._submitted_lock = threading.Lock()
        self.evictions = 0  # adapters dropped (LRU)
        self.base_evictions = 0  # base models dropped (LRU by weight bytes)
        self.batches = 0  # model.generate calls (fewer than requests when concurrent requests share a batch)

    def call(self, fn, *args):
        """Run `fn(*args)` on the compute thread and return its result (directly when already on it)."""
        if threading.current_thread() is self._compute_thread:
            return fn(*args)
        return self._submit(fn, *args).result()

    def _submit(self, fn, *args):
        with self._submitted_lock:
            self._submitted += 1
        return self._compute.submit(self._enter, fn, *args)

    def _enter(self, fn, *args):
        with self._submitted_lock:
            self._submitted -= 1
        self._compute_thread = threading.current_thread()
        if self._threads is not None and (n := self._threads()) != self._threads_set:
            import torch

            torch.set_num_threads(n)  # this thread's OpenMP team: torch work on it (the precision probe, torch models)
            for engine in list(self._engines.values()):
                engine.set_threads(n)
            self._threads_set = n
        try:
            return fn(*args)
        finally:
            if self._threads is not None:
                self._threads()  # work just ended: the provider's jobs leave generation its share a moment longer

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = self.call(pick)
        return self._runtime

    @property
    def engine_name(self) -> str:
        """The server's engine: named, or chosen by what is installed and the device."""
        if self._engine_name in (None, "auto"):
            self._engine_name = engines.choose(None, self.runtime)
        return self._engine_name

    def engine_for(self, spec: models.BaseModelSpec) -> engines.Engine:
        """The server's engine, or torch for a model llama.cpp cannot serve (a Hugging Face directory)."""
        from tunery.serve import gguf

        name = self.engine_name
        if name == "llamacpp" and not gguf.convertible(spec):
            log.info("serving %s with the torch engine: llama.cpp serves models that come from a GGUF file", spec.name)
            name = "torch"
        with self._guard:
            if name not in self._engines:
                self._engines[name] = engines.make(name)
                if self._threads_set:
                    self._engines[name].set_threads(self._threads_set)
            return self._engines[name]

    def base(self, spec: models.BaseModelSpec) -> _Base:
        """The loaded model, loading it first when needed: on the calling thread, not the compute thread, so
        generation on the models already loaded goes on meanwhile; two requests for one model load it once."""
        key = spec.name
        with self._guard:
            if key in self._bases:
                self._bases.move_to_end(key)
                return self._bases[key]
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._bases:
                    return self._bases[key]
            log.info("loading base model %s for serving", key)
            runtime = self.runtime
            engine = self.engine_for(spec)
            loaded = engine.load(spec, runtime)
            base = _Base(spec, engine, loaded, models.load_template(spec), engine.weight_bytes(loaded))
            with self._guard:
                self._bases[key] = base
                self._loading.pop(key, None)
                self._evict_bases(keep=key)
            return base

    def _evict_bases(self, keep: str) -> None:
        """Drop the least recently used idle base models while the loaded weights are over max_base_bytes, and
        free them on the compute thread. A thread that got the model before it was dropped finds it closed and
        asks for the model again."""
        for key in list(self._bases):
            if sum(b.weight_bytes for b in self._bases.values()) <= self.max_base_bytes:
                return
            old = self._bases[key]
            if key == keep:
                continue
            with old.cond:
                if old.busy or old.queue or old.exclusive_waiting:
                    continue
                old.closed = True
            del self._bases[key]
            self.base_evictions += 1
            self._submit(old.engine.close, old.loaded)
            log.info("unloaded base model %s (LRU, over %d MB of weights)", key, self.max_base_bytes >> 20)

    @contextmanager
    def _exclusive(self, base: _Base) -> Iterator[None]:
        """Wait until the model is idle and hold it."""
        with base.cond:
            base.exclusive_waiting += 1
            while base.busy:
                base.cond.wait()
            base.exclusive_waiting -= 1
            base.busy = True
        try:
            yield
        finally:
            with base.cond:
                self._release(base)

    def _release(self, base: _Base) -> None:
        """The model is free (base.cond held): a continuous-batching model's queued requests get a serving loop
        again, unless an unload waits to hold the model first (its release starts the loop)."""
        base.busy = False
        if base.queue and hasattr(base.engine, "serve") and not base.exclusive_waiting and not base.closed:
            base.busy = True
            self._submit(self._serve, base)
        base.cond.notify_all()

    def _attach(self, base: _Base, adapter_dir: str) -> None:
        """Make the adapter loaded (most recently used), evicting the least recently used past max_adapters."""
        if adapter_dir in base.adapters:
            base.adapters.move_to_end(adapter_dir)
            return
        _check_template(Path(adapter_dir), base.template)
        base.engine.attach(base.loaded, adapter_dir)
        base.adapters[adapter_dir] = None
        while len(base.adapters) > self.max_adapters:
            old, _ = base.adapters.popitem(last=False)
            base.engine.detach(base.loaded, old)
            self.evictions += 1
            log.info("evicted adapter %s (LRU, %d loaded)", old, self.max_adapters)

    def forget(self, adapter_dir: str) -> None:
        """Unload an adapter whose model was deleted."""
        for base in list(self._bases.values()):
            with self._exclusive(base):
                self.call(self._unload, base, adapter_dir)

    @staticmethod
    def _unload(base: _Base, adapter_dir: str) -> None:
        if adapter_dir in base.adapters and not base.closed:
            del base.adapters[adapter_dir]
            base.engine.detach(base.loaded, adapter_dir)

    def generate(self, spec: models.BaseModelSpec, adapter_dir: str | None, prompts: Sequence[Prompt],
                 config: GenerationConfig) -> list[Generation]:
        me = _Pending(adapter_dir, list(prompts), config)
        base = self._enqueue(spec, me)
        if hasattr(base.engine, "serve"):
            return self._wait(base, me)
        while True:
            with base.cond:
                while base.busy and not me.done:
                    base.cond.wait()
                if me.done:
                    break
                base.busy = True
                batch = _take_batch(base.queue)
            try:
                self.call(self._run_batch, base, batch)
            finally:
                with base.cond:
                    base.busy = False
                    base.cond.notify_all()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    # ------------------------------------------------ continuous batching (engines with `serve`: llama.cpp)

    def _enqueue(self, spec: models.BaseModelSpec, me: _Pending) -> _Base:
        """Queue a request on its model, loading the model when needed. A continuous-batching model gets its
        serving loop on the compute thread unless one runs (or an unload holds the model: its release starts it).
        The loop admits queued requests between decode steps, so a request never waits for a batch to end."""
        while True:
            base = self.base(spec)
            with base.cond:
                if base.closed:
                    continue  # evicted since `base` returned it
                base.queue.append(me)
                if hasattr(base.engine, "serve") and not base.busy and not base.exclusive_waiting:
                    base.busy = True
                    self._submit(self._serve, base)
                return base

    @staticmethod
    def _wait(base: _Base, me: _Pending) -> list[Generation]:
        with base.cond:
            while not me.done:
                base.cond.wait()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _serve(self, base: _Base) -> None:
        """Serve the queue until it is empty, one adapter's requests at a time (the oldest request's first). A
        loop that stepped aside returns, and its release queues the next loop behind the work that waited."""
        try:
            while True:
                with base.cond:
                    if not base.queue or base.stepped_aside:
                        base.stepped_aside = False
                        return
                    adapter = base.queue[0].adapter
                try:
                    if adapter is not None:
                        self._attach(base, adapter)
                except BaseException as exc:  # a bad adapter fails its own requests only
                    with base.cond:
                        failed = [r for r in base.queue if r.adapter == adapter]
                        base.queue[:] = [r for r in base.queue if r.adapter != adapter]
                    for r in failed:
                        self._deliver(base, r, error=exc)
                    continue
                self.batches += 1
                started = time.monotonic()
                base.engine.serve(base.loaded, base.template, adapter, lambda: self._take(base, adapter, started),
                                  lambda r, **kw: self._deliver(base, r, **kw))
        finally:
            with base.cond:
                self._release(base)

    def _take(self, base: _Base, adapter: str | None, started: float) -> _Pending | None:
        """The next request to admit: the oldest queued one, if it wants this adapter (first come, first served:
        another adapter's request ends the admitting, and the loop switches once the live ones finish). After
        FAIR_SECONDS, none while other work (another model's requests, an unload) waits for the compute thread: the
        live sequences finish, the loop returns and the thread goes to that work before this queue's next loop."""
        with base.cond:
            if not base.queue or base.queue[0].adapter != adapter:
                return None
            if time.monotonic() - started > FAIR_SECONDS and (base.exclusive_waiting or self._submitted):
                base.stepped_aside = True
                return None
            return base.queue.pop(0)

    @staticmethod
    def _deliver(base: _Base, r: _Pending, result: list[Generation] | None = None,
                 error: BaseException | None = None) -> None:
        if r.streamer is not None:
            r.streamer.end()  # the reader stops; the answer (or the error) comes from _wait
        with base.cond:
            r.result, r.error, r.done = result, error, True
            base.cond.notify_all()

    def _run_batch(self, base: _Base, batch: list[_Pending]) -> None:
        self.batches += 1
        try:
            adapter = batch[0].adapter
            if adapter is not None:
                self._attach(base, adapter)
            gens = base.engine.generate(base.loaded, base.template, adapter, [p for r in batch for p in r.prompts],
                                        batch[0].config, self.runtime)
            start = 0
            for r in batch:
                r.result, start = gens[start:start + len(r.prompts)], start + len(r.prompts)
        except BaseException as exc:  # every waiting request gets the error, not only this thread's
            for r in batch:
                r.error = exc
        finally:
            for r in batch:
                r.done = True

    def stream(self, spec: models.BaseModelSpec, adapter_dir: str | None, prompt: Prompt,
               config: GenerationConfig) -> Iterator[str | Generation]:
        """Text pieces as they are generated, then the final Generation."""
        with _IMPORT_LOCK:  # transformers' lazy import is not thread-safe: two first streams at once got ImportError
            from transformers import TextIteratorStreamer

        base = self.base(spec)
        runtime = self.runtime
        if hasattr(base.engine, "serve"):
            streamer = TextIteratorStreamer(_DecodeAdapter(base.template), skip_prompt=True)
            me = _Pending(adapter_dir, [prompt], config, streamer)
            base = self._enqueue(spec, me)
            for piece in streamer:
                if piece:
                    yield piece
            yield self._wait(base, me)[0]
            return
        with self._exclusive(base):
            if adapter_dir is not None:
                self.call(self._attach, base, adapter_dir)  # a bad adapter fails here, before any text is sent
            streamer = TextIteratorStreamer(_DecodeAdapter(base.template), skip_prompt=True)

            def run() -> Generation:
                try:
                    if adapter_dir is not None:
                        self._attach(base, adapter_dir)
                    return base.engine.generate(base.loaded, base.template, adapter_dir, [prompt], config, runtime,
                                                streamer=streamer)[0]
                except BaseException:
                    streamer.end()  # unblock the reader; the error is raised from result() below
                    raise

            future = self._submit(run)
            for piece in streamer:
                if piece:
                    yield piece
            yield future.result()


def _take_batch(queue: list[_Pending]) -> list[_Pending]:
    """The oldest request and every queued one that can share its batch (same adapter and config)."""
    first, batch, size = queue[0], [], 0
    for r in list(queue):
        if not batch or (r.adapter == first.adapter and r.config == first.config and size + len(r.prompts) <= MAX_BATCH):
            batch.append(r)
            size += len(r.prompts)
            queue.remove(r)
    return batch


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
