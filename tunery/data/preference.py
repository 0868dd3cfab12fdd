"""Preference data: a prompt and two answers to it, one preferred. What DPO tunes on.

Formats (detected per line):
  vertex   {"contents": [... ending with a user turn], "systemInstruction"?, "completions": [
             {"score": 1, "completion": {"role": "model", "parts": [{"text"}]}},
             {"score": 0, "completion": {...}}]}                      (Vertex preference tuning)
  openai   {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content"}],
            "non_preferred_output": [...]}                              (OpenAI DPO)
  columns  {"prompt": "...", "chosen": "...", "rejected": "..."}      (TRL, a CSV with those columns)

Each problem is an Issue with its line, JSON pointer and a stable code, as the supervised formats' are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunery.data.formats import _check_text, _parse_contents, _parse_messages, _parse_system_instruction, _Sink, _type
from tunery.data.schema import Example, Issue, Turn

PREFERENCE_FORMATS = ("vertex", "openai", "columns")


@dataclass(frozen=True, slots=True)
class Pair:
    """A prompt (turns ending with a user turn, optional system text) and its preferred and dispreferred answers."""

    prompt: tuple[Turn, ...]
    system: str | None
    chosen: str
    rejected: str

    def example(self, answer: str) -> Example:
        """The conversation with one of the answers as its last (model) turn."""
        return Example(self.prompt + (Turn("model", answer),), self.system)

    def fingerprint(self) -> int:
        return self.example(self.chosen + "\x03" + self.rejected).fingerprint()


def detect(obj: dict) -> str | None:
    if "completions" in obj:
        return "vertex"
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return "openai"
    if "chosen" in obj or "rejected" in obj:
        return "columns"
    return None


def parse(obj: Any, line: int | None = None) -> tuple[Pair | None, str | None, list[Issue]]:
    """One parsed line as a Pair: (pair or None when it has errors, format, issues)."""
    sink = _Sink(line)
    if not isinstance(obj, dict):
        sink.error("", "not_an_object", f"expected a JSON object on each line, found {_type(obj)}")
        return None, None, sink.issues
    fmt = detect(obj)
    if fmt == "vertex":
        pair = _vertex(obj, sink)
    elif fmt == "openai":
        pair = _openai(obj, sink)
    elif fmt == "columns":
        pair = _columns(obj, sink)
    else:
        keys = ", ".join(sorted(obj)[:5]) or "none"
        sink.error("", "unknown_format", 'expected "contents" and "completions" (Vertex), "input" and '
                   f'"preferred_output" (OpenAI DPO), or "prompt", "chosen" and "rejected", found keys: {keys}')
        return None, None, sink.issues
    return (pair if sink.errors == 0 else None), fmt, sink.issues


def _prompt_turns(ex: Example | None, container: str, sink: _Sink, ends_at: str) -> tuple[Turn, ...] | None:
    if ex is None:
        return None
    if ex.media:
        sink.error(ex.media[0].pointer, "unsupported_part", f"expected text parts, found a {ex.media[0].mime} "
                   "part: preference tuning takes text only, as on Vertex")
        return None
    if ex.turns[-1].role != "user":
        sink.error(ends_at, "prompt_not_ending_with_user", "expected the prompt to end with a user turn, found a "
                   "model turn", "the answers to compare go in the completions, not the prompt")
        return None
    return ex.turns


def _merge(inner: _Sink, sink: _Sink, drop: tuple[str, ...] = ("last_turn_not_model", "no_model_turn")) -> None:
    for i in inner.issues:
        if i.code in drop:
            continue
        (sink.error if i.severity == "error" else sink.warn)(i.pointer, i.code, i.message, i.hint)


def _vertex(obj: dict, sink: _Sink) -> Pair | None:
    inner = _Sink(sink.line)
    body = {k: v for k, v in obj.items() if k != "completions"}
    if "system_instruction" in body and "systemInstruction" not in body:
        body["systemInstruction"] = body.pop("system_instruction")
    turns = _turns_of(body, inner, "/contents")
    _merge(inner, sink)
    system = None
    if body.get("systemInstruction") is not None:
        system = _parse_system_instruction(body["systemInstruction"], _Sink(sink.line))
    prompt = _prompt_turns(turns, "/contents", sink, f"/contents/{len(obj.get('contents') or []) - 1}/role")
    completions = obj.get("completions")
    if not isinstance(completions, list):
        sink.error("/completions", "invalid_completions", f"expected an array of two completions, found "
                   f"{_type(completions)}")
        return None
    if len(completions) != 2:
        sink.error("/completions", "wrong_completion_count", f"expected exactly 2 completions (score 1 and score 0), "
                   f"found {len(completions)}")
        return None
    answers: dict[int, str] = {}
    for k, c in enumerate(completions):
        ptr = f"/completions/{k}"
        if not isinstance(c, dict):
            sink.error(ptr, "invalid_completions", f'expected {{"score": ..., "completion": ...}}, found {_type(c)}')
            continue
        score = c.get("score")
        if score not in (0, 1) or isinstance(score, bool):
            sink.error(f"{ptr}/score", "invalid_score", f"expected score 1 (preferred) or 0 (dispreferred), found "
                       f"{score!r}")
            continue
        comp = c.get("completion")
        if not isinstance(comp, dict):
            sink.error(f"{ptr}/completion", "invalid_completions", f"expected a Content with role \"model\", found "
                       f"{_type(comp)}")
            continue
        if comp.get("role", "model") != "model":
            sink.error(f"{ptr}/completion/role", "completion_not_model", f"expected role \"model\", found "
                       f"{comp.get('role')!r}")
            continue
        one = _Sink(sink.line)
        ex = _parse_contents({"contents": [{"role": "user", "parts": [{"text": "-"}]}, {**comp, "role": "model"}]}, one)
        _merge(_repoint(one, "/contents/1", f"{ptr}/completion"), sink, drop=())
        if ex is not None:
            if ex.turns[-1].media:
                sink.error(f"{ptr}/completion", "unsupported_part", "expected text parts only in a completion")
                continue
            if score in answers:
                sink.error(f"{ptr}/score", "invalid_score", f"expected one completion of score 1 and one of score 0, "
                           f"found score {score} twice")
                continue
            answers[score] = ex.turns[-1].text
    if sink.errors or prompt is None or len(answers) != 2:
        return None
    return Pair(prompt, system, answers[1], answers[0])


def _repoint(inner: _Sink, old: str, new: str) -> _Sink:
    out = _Sink(inner.line)
    for i in inner.issues:
        out.issues.append(Issue(i.line, new + i.pointer[len(old):] if i.pointer.startswith(old) else i.pointer,
                                i.code, i.severity, i.message, i.hint))
    return out


def _turns_of(body: dict, inner: _Sink, container: str) -> Example | None:
    """The prompt as an Example, parsed as the supervised formats parse a conversation (with a stand-in answer
    after it, since a supervised conversation must end with one); the prompt's last turn is the caller's check."""
    contents = body.get("contents")
    if not (isinstance(contents, list) and contents and isinstance(contents[-1], dict)
            and contents[-1].get("role") == "user"):
        return _parse_contents(body, inner)  # reports what is missing; a prompt ending with the model is refused later
    ex = _parse_contents({**body, "contents": [*contents, {"role": "model", "parts": [{"text": "-"}]}]}, inner)
    return Example(ex.turns[:-1], ex.system) if ex is not None else None


def _openai(obj: dict, sink: _Sink) -> Pair | None:
    inp = obj.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
        sink.error("/input/messages", "missing_messages", 'expected "input": {"messages": [...]}, found '
                   + _type(inp.get("messages") if isinstance(inp, dict) else inp))
        return None
    msgs = inp["messages"]
    inner = _Sink(sink.line)
    ends_user = bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "user"
    fake = {"messages": [*msgs, {"role": "assistant", "content": "-"}] if ends_user else msgs}
    ex = _parse_messages(fake, inner, "openai")
    if ex is not None and not ends_user:
        ex = Example(ex.turns + (Turn("model", "-"),), ex.system)  # the prompt check below refuses it
    _merge(_repoint(inner, "/messages", "/input/messages"), sink)
    prompt = None
    if ex is not None:
        prompt = _prompt_turns(Example(ex.turns[:-1], ex.system) if len(ex.turns) > 1 else None, "/input/messages",
                               sink, f"/input/messages/{len(msgs) - 1}/role")
        if len(ex.turns) == 1:
            sink.error("/input/messages", "empty_messages", "expected at least one user message, found none")
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        out = obj.get(key)
        if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
            sink.error(f"/{key}", "invalid_completions", f'expected [{{"role": "assistant", "content": "..."}}], '
                       f"found {_type(out)}" + (f" of {len(out)}" if isinstance(out, list) else ""))
            continue
        if out[0].get("role") != "assistant":
            sink.error(f"/{key}/0/role", "completion_not_model", f'expected role "assistant", found '
                       f"{out[0].get('role')!r}")
            continue
        content = out[0].get("content")
        if _check_text(content, f"/{key}/0/content", sink):
            answers.append(content)
    if sink.errors or prompt is None:
        return None
    return Pair(prompt, ex.system if ex else None, answers[0], answers[1])


def _columns(obj: dict, sink: _Sink) -> Pair | None:
    texts = []
    for col in ("prompt", "chosen", "rejected"):
        if col not in obj or obj[col] is None:
            sink.error(f"/{col}", "missing_column", f'expected a "{col}" value, found none')
        elif _check_text(obj[col], f"/{col}", sink):
            texts.append(obj[col])
    if sink.errors:
        return None
    return Pair((Turn("user", texts[0]),), None, texts[1], texts[2])


def to_vertex(pair: Pair) -> dict:
    out: dict = {}
    if pair.system is not None:
        out["systemInstruction"] = {"parts": [{"text": pair.system}]}
    out["contents"] = [{"role": t.role, "parts": [{"text": t.text}]} for t in pair.prompt]
    out["completions"] = [{"score": 1, "completion": {"role": "model", "parts": [{"text": pair.chosen}]}},
                          {"score": 0, "completion": {"role": "model", "parts": [{"text": pair.rejected}]}}]
    return out


# ---------------------------------------------------------------- validation and statistics

def scan_file(path, *, kind: str = "train", template=None, limits=None, max_issues: int | None = None):
    """One pass over a preference dataset: every problem (line, pointer, code), fingerprints, and Vertex's
    PreferenceOptimizationDataStats. With a template, each prompt+completion is measured against the token limit."""
    import numpy as np

    from tunery.data.formats import Columns
    from tunery.data.jsonl import open_checked, read_records
    from tunery.data.stats import distribution
    from tunery.data.validate import DEFAULT_MAX_ISSUES, MAX_FILE_BYTES, FileReport, _duplicates, _file_checks

    rep = FileReport(str(path), kind, max_issues=max_issues or DEFAULT_MAX_ISSUES)
    with open_checked(path):
        pass
    import os

    if os.path.getsize(path) > MAX_FILE_BYTES:
        rep.add(Issue(None, "", "file_too_large", "error", f"expected at most 1 GiB, found "
                      f"{os.path.getsize(path) / (1 << 30):.2f} GiB", "split the dataset"))
    formats: dict[str, int] = {}
    inputs, outputs, samples, dropped = [], [], [], {}
    for line, obj, issue in read_records(path, Columns("prompt", "chosen")):
        rep.records += 1
        if issue is not None:
            rep.add(issue)
            dropped[issue.code] = dropped.get(issue.code, 0) + 1
            continue
        pair, fmt, issues = parse(obj, line)
        for i in issues:
            rep.add(i)
        if fmt:
            formats[fmt] = formats.get(fmt, 0) + 1
        if pair is None:
            code = next(i.code for i in issues if i.severity == "error")
            dropped[code] = dropped.get(code, 0) + 1
            continue
        if template is not None:
            prompt = len(template.render_prompt(pair.prompt, pair.system))
            chosen, rejected = (m.total for m in template.measure_batch([pair.example(pair.chosen),
                                                                          pair.example(pair.rejected)]))
            if limits is not None and max(chosen, rejected) > limits.max_length:
                rep.add(Issue(line, "", "pair_too_long", "error", f"expected the prompt and each completion within "
                              f"{limits.max_length:,} tokens ({limits.reason}), found {max(chosen, rejected):,}",
                              "shorten the prompt or the completions"))
                dropped["pair_too_long"] = dropped.get("pair_too_long", 0) + 1
                continue
            inputs.append(prompt)
            outputs += [chosen - prompt, rejected - prompt]
        rep.examples += 1
        rep.hashes.append(pair.fingerprint())
        rep.lines.append(line)
        if len(samples) < 3:
            samples.append(pair)
    from collections import Counter

    _file_checks(rep, Counter(formats))
    _duplicates(rep)
    rep.format = max(formats, key=formats.get) if formats else None
    rep.issues.sort(key=lambda i: (i.line or 0))
    n = rep.examples
    stats: dict = {"tuningDatasetExampleCount": n,
                   "droppedExampleReasons": [f"{k}: {v} example{'s' if v > 1 else ''}" for k, v in sorted(dropped.items())],
                   "scoresDistribution": distribution(np.array([1.0, 0.0] * n)) if n else distribution(np.array([])),
                   "userDatasetExamples": [to_vertex(p) for p in samples]}
    if inputs:
        inp, out = np.array(inputs, dtype=np.int64), np.array(outputs, dtype=np.int64)
        stats |= {"userInputTokenDistribution": distribution(inp), "userOutputTokenDistribution": distribution(out),
                  "totalTokenCount": int(2 * inp.sum() + out.sum())}  # each pair runs as two sequences
    rep.stats = stats
    return rep


def validate(train, validation=None, *, template=None, limits=None, max_issues: int | None = None):
    """A preference training file (and validation file): the Report the supervised validator gives."""
    from tunery.data.validate import Report, overlap

    files = [scan_file(train, kind="train", template=template, limits=limits, max_issues=max_issues)]
    if validation is not None:
        files.append(scan_file(validation, kind="validation", template=template, limits=limits, max_issues=max_issues))
        overlap(files[0], files[1])
    return Report(files)


def read_pairs(path) -> list[Pair]:
    from tunery.data.formats import Columns
    from tunery.data.jsonl import read_records

    return [p for line, obj, issue in read_records(path, Columns("prompt", "chosen")) if issue is None
            for p in [parse(obj, line)[0]] if p is not None]
