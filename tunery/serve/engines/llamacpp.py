"""The llama.cpp engine: llama.cpp through llama-cpp-python's C API, one loaded model and one context per base model.

The prompts of a batch decode together as llama.cpp sequences (one `llama_batch` per step, a sequence id per
prompt) in a unified KV cache of the model's context length; a batch whose prompts and answers would not fit is split.
Adapters are GGUF LoRA adapters loaded beside the base weights and set on the context for the batch that needs
them (the cache is cleared per batch, so switching costs nothing). Prompts are token ids rendered by tunery's
own chat template, and text is decoded by tunery's tokenizer: the same ids and text as the torch engine and as
training. Greedy picks the arg-max logit; sampling applies temperature, top-k then top-p to the logits, as
transformers does, from a generator seeded per batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
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
        self.lib.llama_set_n_threads(loaded.ctx, self.threads, self.threads)
        self._activate(loaded, adapter_dir)
        encoded = [template.render_prompt(p.turns, p.system) for p in prompts]
        rng = np.random.default_rng(config.seed) if config.temperature > 0 else None
        rows: list[list[int]] = []
        for group in _fitting(encoded, config.max_output_tokens, loaded.n_ctx):
            rows += self._decode(loaded, template, [encoded[i] for i in group], config, rng, streamer)
        return [finish(row, len(ids), template, config) for row, ids in zip(rows, encoded)]

    def _decode(self, loaded: _Loaded, template: ChatTemplate, encoded: list[list[int]], config: GenerationConfig,
                rng: np.random.Generator | None, streamer: Any) -> list[list[int]]:
        """Each prompt's continuation: all sequences step together; a finished one leaves the batch."""
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(loaded.ctx), True)
        if streamer is not None:
            streamer.put(np.array([encoded[0]]))
        logits = self._prefill(loaded, encoded)
        out: list[list[int]] = [[] for _ in encoded]
        alive = list(range(len(encoded)))
        for step in range(config.max_output_tokens):
            for seq in alive:
                token = _pick(logits[seq], config, rng)
                out[seq].append(token)
                if streamer is not None:
                    streamer.put(np.array([token]))
            alive = [s for s in alive if not stopped(out[s], template, config)]
            if not alive or step == config.max_output_tokens - 1:
                break
            tokens = [(out[s][-1], len(encoded[s]) + step, s, True) for s in alive]
            logits = self._run(loaded, tokens)
        if streamer is not None:
            streamer.end()
        return out

    def _prefill(self, loaded: _Loaded, encoded: list[list[int]]) -> dict[int, np.ndarray]:
        """The prompts through the model in chunks; the logits after each prompt's last token, by sequence."""
        tokens = [(tok, pos, seq, pos == len(ids) - 1) for seq, ids in enumerate(encoded) for pos, tok in enumerate(ids)]
        logits: dict[int, np.ndarray] = {}
        for start in range(0, len(tokens), PROMPT_CHUNK):
            logits |= self._run(loaded, tokens[start:start + PROMPT_CHUNK])
        return logits

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
        lib.llama_batch_free(loaded.batch)
        lib.llama_free(loaded.ctx)
        lib.llama_model_free(loaded.model)


def _fitting(encoded: list[list[int]], max_output: int, n_ctx: int) -> list[list[int]]:
    """Groups of prompt indexes whose prompts and answers fit in the context's cells together."""
    groups, size = [[]], 0
    for i, ids in enumerate(encoded):
        need = len(ids) + max_output
        if groups[-1] and (size + need > n_ctx or len(groups[-1]) == MAX_SEQUENCES):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += need
    return groups


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
