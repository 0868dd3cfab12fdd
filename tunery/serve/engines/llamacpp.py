"""The llama.cpp engine: llama.cpp through llama-cpp-python's C API, one loaded model and one context per base model.

Requests are decoded with continuous batching (`serve`): each prompt is a llama.cpp sequence, all live sequences
step together (one `llama_batch` per step) in a unified KV cache of the model's context length, a request that
arrives while others decode joins at the next step, and each request returns as soon as its own answers are done.
Adapters are GGUF LoRA adapters loaded beside the base weights and set on the context for the requests that need
them (the registry serves one adapter's queue at a time, and the cache is cleared between them). Prompts are token ids rendered by tunery's
own chat template, and text is decoded by tunery's tokenizer: the same ids and text as the torch engine and as
training. Greedy picks the arg-max logit; sampling applies temperature, top-k then top-p to the logits, as
transformers does, from a generator seeded per batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
from types import SimpleNamespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunery import models
from tunery.device import Runtime
from tunery.errors import TuneryError
from tunery.serve import gguf
from tunery.serve.generate import Generation, GenerationConfig, Prompt, finish, stopped
from tunery.text.chat_template import ChatTemplate

log = logging.getLogger("tunery")
MAX_SEQUENCES = 16  # prompts decoded together (the registry batches at most this many)
PROMPT_CHUNK = 512  # prompt tokens per llama_decode call


class LlamaCppError(TuneryError):
    code = "internal"


@dataclass
class _Loaded:
    model: Any  # llama_model *
    ctx: Any  # llama_context *
    batch: Any  # llama_batch with room for PROMPT_CHUNK tokens
    n_ctx: int
    n_vocab: int
    path: str
    adapters: dict[str, Any] = field(default_factory=dict)  # adapter dir -> llama_adapter_lora *
    active: str | None = None  # the adapter set on the context


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, dtype: str | None = None) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load chatter stays out of logs
        self.lib = llama_cpp
        self.dtype = dtype or os.environ.get("TUNERY_GGUF_DTYPE", "f16")
        self.threads = len(os.sched_getaffinity(0))

    def load(self, spec: models.BaseModelSpec, runtime: Runtime) -> _Loaded:
        lib = self.lib
        path = gguf.base_gguf(spec, self.dtype)
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise LlamaCppError(f"llama.cpp could not load {path}")
        n_ctx = min(spec.context_length or 4096, 32768)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = PROMPT_CHUNK
        cparams.n_seq_max = MAX_SEQUENCES
        cparams.kv_unified = True  # one pool of n_ctx cells shared by the batch's sequences
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            lib.llama_model_free(model)
            raise LlamaCppError(f"llama.cpp could not make a context of {n_ctx} tokens for {path}")
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        batch = lib.llama_batch_init(PROMPT_CHUNK, 0, 1)
        return _Loaded(model, ctx, batch, n_ctx, n_vocab, str(path))

    def weight_bytes(self, loaded: _Loaded) -> int:
        return os.path.getsize(loaded.path)

    def set_threads(self, n: int) -> None:
        self.threads = n

    def attach(self, loaded: _Loaded, adapter_dir: str) -> None:
        path = gguf.adapter_gguf(adapter_dir)
        adapter = self.lib.llama_adapter_lora_init(loaded.model, str(path).encode())
        if not adapter:
            raise LlamaCppError(f"llama.cpp could not load the adapter {path}")
        loaded.adapters[adapter_dir] = adapter

    def detach(self, loaded: _Loaded, adapter_dir: str) -> None:
        adapter = loaded.adapters.pop(adapter_dir, None)
        if adapter is not None:
            if loaded.active == adapter_dir:
                self._activate(loaded, None)
            self.lib.llama_adapter_lora_free(adapter)

    def _activate(self, loaded: _Loaded, adapter_dir: str | None) -> None:
        if loaded.active == adapter_dir:
            return
        lib = self.lib
        if adapter_dir is None:
            rc = lib.llama_set_adapters_lora(loaded.ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(loaded.adapters[adapter_dir])
            rc = lib.llama_set_adapters_lora(loaded.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise LlamaCppError(f"llama.cpp could not set the adapter {adapter_dir} ({rc})")
        loaded.active = adapter_dir

    def generate(self, loaded: _Loaded, template: ChatTemplate, adapter_dir: str | None, prompts: Sequence[Prompt],
                 config: GenerationConfig, runtime: Runtime, streamer: Any = None) -> list[Generation]:
        """One request on its own: `serve` with a queue of one."""
        queue = [SimpleNamespace(prompts=list(prompts), config=config, streamer=streamer)]
        done: dict[str, Any] = {}
        self.serve(loaded, template, adapter_dir, lambda: queue.pop() if queue else None,
                   lambda _, result=None, error=None: done.update(result=result, error=error))
        if streamer is not None:
            streamer.end()
        if done.get("error") is not None:
            raise done["error"]
        return done["result"]

    def serve(self, loaded: _Loaded, template: ChatTemplate, adapter_dir: str | None, take: Callable[[], Any],
              deliver: Callable[..., None]) -> None:
        """Continuous batching: decode the requests `take()` hands out (the registry's queued requests for this
        adapter, oldest first, None when there are none), admitting new ones between decode steps whenever a
        sequence slot and the KV cells their prompt and answer need are free, and `deliver(request, result=...)`
        each as soon as its own answers are done, so a short answer never waits for a long one. Returns when
        nothing is left; an error is delivered to every request it holds."""
        self.lib.llama_set_n_threads(loaded.ctx, self.threads, self.threads)
        self._activate(loaded, adapter_dir)
        mem = self.lib.llama_get_memory(loaded.ctx)
        self.lib.llama_memory_clear(mem, True)
        held: list[_Request] = []  # taken, not all of whose prompts are admitted yet
        live: dict[int, _Seq] = {}  # sequence id -> sequence being decoded
        logits: dict[int, np.ndarray] = {}
        try:
            while True:
                step = []  # every live sequence has its logits here: pick its next token
                for sid, seq in list(live.items()):
                    token = _pick(logits.pop(sid), seq.request.config, seq.rng)
                    seq.out.append(token)
                    seq.request.put(seq.index, token)
                    if stopped(seq.out, template, seq.request.config) or len(seq.out) == seq.request.config.max_output_tokens:
                        del live[sid]
                        self.lib.llama_memory_seq_rm(mem, sid, -1, -1)
                        if seq.request.finish(seq.index, seq.out, template):
                            deliver(seq.request.pending, result=seq.request.results)
                    else:
                        step.append((token, len(seq.ids) + len(seq.out) - 1, sid, True))
                # new sequences take the freed slots at once, their prompts in the same pass as the step (one pass
                # over the weights for both)
                tokens = step + self._prompt_tokens(self._admit(loaded, template, take, held, live))
                if not tokens:
                    return
                for start in range(0, len(tokens), PROMPT_CHUNK):
                    logits |= self._run(loaded, tokens[start:start + PROMPT_CHUNK])
        except BaseException as exc:  # noqa: BLE001 - every request this loop holds gets the error
            for request in _unique([s.request for s in live.values()] + held):
                deliver(request.pending, error=exc)
            self.lib.llama_memory_clear(mem, True)

    def _admit(self, loaded: _Loaded, template: ChatTemplate, take: Callable[[], Any], held: list["_Request"],
               live: dict[int, "_Seq"]) -> list[tuple[int, "_Seq"]]:
        """New sequences for free slots, from the held requests and then newly taken ones, while the KV cells
        their prompts and answers need are free (a request's prompts may be admitted a few at a time)."""
        used = sum(len(s.ids) + s.request.config.max_output_tokens for s in live.values())
        new: list[tuple[int, _Seq]] = []
        while len(live) < MAX_SEQUENCES:
            if not held:
                pending = take()
                if pending is None:
                    break
                held.append(_Request(pending, template))
            request = held[0]
            ids = request.encoded[request.next]
            need = len(ids) + request.config.max_output_tokens
            if used + need > loaded.n_ctx and live:
                break  # wait for cells to free up (alone, a prompt always fits: fit_context capped it)
            sid = min(set(range(MAX_SEQUENCES)) - set(live))
            seq = _Seq(request, request.next, ids, _rng(request.config, request.next))
            live[sid] = seq
            new.append((sid, seq))
            used += need
            request.next += 1
            if request.next == len(request.encoded):
                held.pop(0)
        return new

    @staticmethod
    def _prompt_tokens(new: list[tuple[int, "_Seq"]]) -> list[tuple[int, int, int, bool]]:
        for _, seq in new:
            seq.request.put_prompt(seq.index, seq.ids)
        return [(tok, pos, sid, pos == len(seq.ids) - 1) for sid, seq in new for pos, tok in enumerate(seq.ids)]

    def _run(self, loaded: _Loaded, tokens: list[tuple[int, int, int, bool]]) -> dict[int, np.ndarray]:
        """One llama_decode of (token, position, sequence, wants logits); the logits wanted, by sequence."""
        lib, b = self.lib, loaded.batch
        b.n_tokens = len(tokens)
        for i, (tok, pos, seq, want) in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        rc = lib.llama_decode(loaded.ctx, b)
        if rc != 0:
            raise LlamaCppError(f"llama_decode failed ({rc}) on a batch of {len(tokens)} tokens")
        return {seq: np.ctypeslib.as_array(lib.llama_get_logits_ith(loaded.ctx, i), shape=(loaded.n_vocab,)).copy()
                for i, (_, _, seq, want) in enumerate(tokens) if want}

    def close(self, loaded: _Loaded) -> None:
        lib = self.lib
        for adapter in loaded.adapters.values():
            lib.llama_adapter_lora_free(adapter)
        loaded.adapters.clear()
        lib.llama_batch_free(loaded.batch)
        lib.llama_free(loaded.ctx)
        lib.llama_model_free(loaded.model)
        loaded.ctx = loaded.model = None  # freed: a use after this fails in Python, not in C


class _Request:
    """A registry request being served: its prompts' ids, which are admitted, the answers done so far."""

    def __init__(self, pending: Any, template: ChatTemplate) -> None:
        self.pending, self.config, self.template = pending, pending.config, template
        self.encoded = [template.render_prompt(p.turns, p.system) for p in pending.prompts]
        self.next = 0  # the next prompt to admit
        self.results: list[Generation | None] = [None] * len(self.encoded)
        self.streamer = getattr(pending, "streamer", None)

    def put_prompt(self, index: int, ids: list[int]) -> None:
        if self.streamer is not None and index == 0:
            self.streamer.put(np.array([ids]))

    def put(self, index: int, token: int) -> None:
        if self.streamer is not None and index == 0:
            self.streamer.put(np.array([token]))

    def finish(self, index: int, out: list[int], template: ChatTemplate) -> bool:
        """Record a finished answer; True when the request's answers are all done."""
        self.results[index] = finish(out, len(self.encoded[index]), template, self.config)
        return all(r is not None for r in self.results)


@dataclass
class _Seq:
    request: _Request
    index: int  # which of the request's prompts
    ids: list[int]
    rng: np.random.Generator | None
    out: list[int] = field(default_factory=list)


def _rng(config: GenerationConfig, index: int) -> np.random.Generator | None:
    """Each sampled sequence draws from its own generator, seeded by the request's seed and the candidate's index:
    the candidates differ, and the same seed gives the same candidates whatever else is decoding."""
    if config.temperature <= 0:
        return None
    return np.random.default_rng(None if config.seed is None else [config.seed, index])


def _unique(requests: list[_Request]) -> list[_Request]:
    return list({id(r): r for r in requests}.values())


def _pick(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator | None) -> int:
    """The next token: arg-max, or a sample after temperature, top-k and top-p (transformers' order)."""
    if rng is None:
        return int(logits.argmax())
    scores = logits.astype(np.float64) / config.temperature
    if config.top_k:
        kth = np.partition(scores, -config.top_k)[-config.top_k]
        scores[scores < kth] = -np.inf
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if config.top_p is not None and config.top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, config.top_p)) + 1]  # the smallest set reaching top_p
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))
