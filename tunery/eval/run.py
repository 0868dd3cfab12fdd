"""Evaluate a model on a dataset: read prompts and references, generate in batches, score, compare.

A model to evaluate (`Target`) is one of:
    a base model name or alias        "smollm2-135m-instruct", "gemini-2.0-flash-001", a local model directory
    a run directory of `tune --local` its final adapter on its base model (or a checkpoint directory)
    a name on a tunery server         a tuned model, endpoint or base model, called over generateContent
Local targets share one base model per process (the serving Registry), so base and tuned in `compare` load it once.

Batching: prompts are sorted by token length and cut into batches of `batch_size`, so each batch pads little and
finishes together; results return in the dataset's order. Greedy decoding by default; the same config for both
sides of a comparison.
"""

from __future__ import annotations

import base64
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tunery import models
from tunery.data import media as md
from tunery.data.formats import Columns, parse
from tunery.data.jsonl import read_records
from tunery.errors import DatasetError, TuneryError
from tunery.eval import metrics as mx
from tunery.serve.generate import Generation, GenerationConfig, Prompt
from tunery.train import checkpoints as ck

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_OUTPUT_TOKENS = 256


@dataclass(frozen=True)
class Item:
    line: int
    prompt: Prompt
    reference: str


def load_items(path: str | Path, limit: int | None = None, columns: Columns = Columns()) -> list[Item]:
    """Prompts and references from any supported dataset file: the reference is the last model turn, the prompt is
    everything before it (system instruction included). The seeds' CSV (input_text, output_text) works as is."""
    path = str(path)
    items: list[Item] = []
    for line, obj, issue in read_records(path, columns):
        if issue is not None:
            raise DatasetError(path, f"{issue.message}", line=line, hint=issue.hint or "run `tunery validate` on it")
        example, _, issues = parse(obj, line, columns)
        if example is None:
            first = next(i for i in issues if i.severity == "error")
            where = f" at {first.pointer}" if first.pointer else ""
            raise DatasetError(path, f"{first.message}{where}", line=line, hint=first.hint or "run `tunery validate`")
        if example.turns[-1].role != "model" or len(example.turns) < 2:
            raise DatasetError(path, "expected the conversation to end with a model turn (the reference answer), "
                               f"found a {example.turns[-1].role} turn last", line=line)
        example = md.absolute(example, Path(path).parent)  # image paths relative to the test set
        items.append(Item(line, Prompt(example.turns[:-1], example.system), example.reference))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DatasetError(path, "no examples to evaluate")
    return items


def infer_task(references: list[str]) -> str:
    """The task when none is given: answers of at most 3 words drawn from a set that repeats (on average each at
    least twice) are classes; other short answers (8 words or fewer on average) are extractive QA; anything longer
    is summarization."""
    words = [len(r.split()) for r in references]
    distinct = {mx.normalize_label(r) for r in references}
    if max(words) <= 3 and len(distinct) <= len(references) / 2:
        return "classification"
    if sum(words) / len(words) <= 8:
        return "qa"
    return "summarization"


# ---------------------------------------------------------------- what to evaluate

@dataclass
class Target:
    label: str  # what reports show
    spec: models.BaseModelSpec | None = None  # local: the base model
    adapter: str | None = None  # local: a PEFT adapter directory on it
    server: str | None = None  # remote: the server URL ...
    name: str | None = None  # ... and the model / endpoint resource name there
    run_dir: str | None = None  # a tune --local run: where its metrics.jsonl lives

    def describe(self) -> dict:
        d = {"label": self.label}
        if self.spec is not None:
            d["base_model"] = self.spec.name
        return d | {k: v for k, v in (("adapter", self.adapter), ("server", self.server), ("name", self.name)) if v}


def resolve_target(name: str | None, server: str | None = None, flag: str = "--model") -> Target:
    if server:
        if not name:
            raise TuneryError(f"{flag} is required with --server (a tuned model, endpoint or base model name)")
        return Target(label=name, server=server, name=name)
    path = Path(name) if name else None
    if path is not None and path.is_dir() and (path / "adapter_config.json").is_file():  # a checkpoint
        manifest = json.loads((path / "manifest.json").read_text())
        return Target(str(path), models.resolve(manifest["base_model"]["name"]), str(path))
    if path is not None and path.is_dir() and (path / ck.RUN_FILE).is_file():  # a tune --local run directory
        if not ck.is_complete(path / ck.ADAPTER_DIR):
            raise TuneryError(f"{path}: this run has not finished (no complete adapter/)",
                              hint="run the same `tunery tune --local` command again to resume it")
        manifest = json.loads((path / ck.RUN_FILE).read_text())
        return Target(str(path), models.resolve(manifest["base_model"]["name"]), str(path / ck.ADAPTER_DIR),
                      run_dir=str(path))
    spec = models.resolve(name)
    return Target(spec.name, spec)


# ---------------------------------------------------------------- generation

class Generator:
    """Generates for targets; local ones share a serving Registry (one base model load per process).

    Local evaluation decodes in float32, without bf16 autocast: a bf16 batch's greedy tokens depend on which
    other prompts share it (9 of 32 alert summaries changed on this CPU), and scores must not depend on
    --batch-size. In float32 batched and one-at-a-time outputs are identical (tested; `bench/eval_bench.py`)."""

    def __init__(self, registry=None) -> None:
        self._registry = registry

    @property
    def registry(self):
        if self._registry is None:
            import torch

            from tunery.device import Runtime
            from tunery.serve.registry import Registry

            self._registry = Registry(runtime=Runtime("cuda" if torch.cuda.is_available() else "cpu", None))
        return self._registry

    def generate(self, target: Target, prompts: list[Prompt], config: GenerationConfig,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> list[Generation]:
        if target.server:
            return _generate_remote(target, prompts, config, batch_size)
        return generate_batched(lambda batch: self.registry.generate(target.spec, target.adapter, batch, config),
                                models.load_template(target.spec), prompts, batch_size)


def generate_batched(run, template, prompts: list[Prompt], batch_size: int) -> list[Generation]:
    """`run(batch) -> generations` over length-sorted batches of at most `batch_size`, evened out (100 prompts at 64
    make two batches of 50, not 64 + 36); results in the prompts' order."""
    lengths = [len(template.render_prompt(p.turns, p.system)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    size = math.ceil(len(order) / max(1, math.ceil(len(order) / batch_size)))
    out: list[Generation | None] = [None] * len(prompts)
    for k in range(0, len(order), size):
        chunk = order[k:k + size]
        for i, g in zip(chunk, run([prompts[i] for i in chunk])):
            out[i] = g
    return out  # type: ignore[return-value]


def _generate_remote(target: Target, prompts: list[Prompt], config: GenerationConfig, batch_size: int
                     ) -> list[Generation]:
    """One generateContent per prompt, `batch_size` in flight (the server batches concurrent requests)."""
    from tunery.client import Client

    client = Client(server=target.server)
    name = client.model_path(target.name)
    gen_config = {"temperature": config.temperature, "maxOutputTokens": config.max_output_tokens}

    def parts(t) -> list[dict]:  # images travel inline: the server need not see this machine's files
        media = [{"inlineData": {"mimeType": m.mime, "data": base64.b64encode(md.read(m)).decode()}} for m in t.media]
        return media + ([{"text": t.text}] if t.text or not media else [])

    def one(p: Prompt) -> Generation:
        body = {"contents": [{"role": t.role, "parts": parts(t)} for t in p.turns], "generationConfig": gen_config}
        if p.system:
            body["systemInstruction"] = {"parts": [{"text": p.system}]}
        r = client.call("POST", f"{name}:generateContent", json=body)
        cand = (r.get("candidates") or [{}])[0]
        text = "".join(part.get("text", "") for part in cand.get("content", {}).get("parts", []))
        usage = r.get("usageMetadata", {})
        return Generation(text, cand.get("finishReason", "STOP"), usage.get("promptTokenCount", 0),
                          usage.get("candidatesTokenCount", 0))

    with ThreadPoolExecutor(max_workers=batch_size) as pool:
        return list(pool.map(one, prompts))


# ---------------------------------------------------------------- evaluate and compare

@dataclass
class Result:
    target: Target
    task: str
    metrics: dict[str, float]
    details: dict
    per_example: list[float]
    predictions: list[str]
    output_tokens: list[int]
    seconds: float


@dataclass
class Evaluation:
    """One or two results on the same items (base and tuned) plus what the report needs."""

    data: str
    task: str
    items: list[Item]
    results: dict[str, Result]  # "model" for a single evaluation; "base" and "tuned" for a comparison
    generation: dict = field(default_factory=dict)

    def improvement(self) -> dict[str, float | None]:
        base, tuned = self.results["base"].metrics, self.results["tuned"].metrics
        return {k: mx.improvement(base[k], tuned[k]) for k in base}


def evaluate(target: Target, items: list[Item], task: str, config: GenerationConfig, batch_size: int,
             generator: Generator | None = None) -> Result:
    generator = generator or Generator()
    t = time.perf_counter()
    gens = generator.generate(target, [i.prompt for i in items], config, batch_size)
    seconds = time.perf_counter() - t
    predictions = [g.text for g in gens]
    s = mx.score(task, predictions, [i.reference for i in items])
    return Result(target, task, s.metrics, s.details, s.per_example, predictions, [g.output_tokens for g in gens],
                  seconds)


def run(data: str | Path, targets: dict[str, Target], task: str | None = None, limit: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE, max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        temperature: float = 0.0, generator: Generator | None = None) -> Evaluation:
    """Evaluate each target on the same items with the same decoding. Keys name the roles ("base", "tuned")."""
    items = load_items(data, limit)
    task = task or infer_task([i.reference for i in items])
    if task not in mx.TASKS:
        raise TuneryError(f"--task: expected one of {', '.join(mx.TASKS)}, found {task!r}")
    config = GenerationConfig(max_output_tokens=max_output_tokens, temperature=temperature, seed=0)
    generator = generator or Generator()
    results = {role: evaluate(t, items, task, config, batch_size, generator) for role, t in targets.items()}
    return Evaluation(str(data), task, items, results,
                      {"temperature": temperature, "max_output_tokens": max_output_tokens, "batch_size": batch_size})
