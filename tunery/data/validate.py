"""Validate a dataset before any compute is spent: every problem, with its line, JSON pointer and a stable code.

One streaming pass per file: read -> parse -> convert -> check -> (batched) token count -> statistics.
Memory stays flat: per example we keep an 8-byte hash, a 4-byte line number and a few token counts.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tunery.data import media as md
from tunery.data.formats import Columns, parse
from tunery.data.jsonl import open_checked, read_records
from tunery.data.schema import Example, Issue
from tunery.data.stats import StatsAccumulator
from tunery.text.chat_template import ChatTemplate

MAX_FILE_BYTES = 1 << 30  # Vertex: 1 GB per JSONL training file
MAX_TRAIN_EXAMPLES = 1_000_000  # Vertex: 1M text examples
MAX_VALIDATION_EXAMPLES = 5_000  # Vertex: 5,000 validation examples
MIN_RECOMMENDED_EXAMPLES = 100  # Vertex recommends at least 100 examples
DEFAULT_MAX_ISSUES = 1000  # issues listed per file; all are counted
_TOKEN_BATCH = 512  # examples per tokenizer call


@dataclass
class FileReport:
    path: str
    kind: str  # "train" | "validation"
    format: str | None = None
    records: int = 0  # non-blank lines (or CSV rows)
    examples: int = 0  # records that converted without error
    counts: Counter = field(default_factory=Counter)  # issues by code
    errors: int = 0
    warnings: int = 0
    issues: list[Issue] = field(default_factory=list)  # the first max_issues, sorted by line
    stats: dict = field(default_factory=dict)
    hashes: array = field(default_factory=lambda: array("Q"), repr=False)
    lines: array = field(default_factory=lambda: array("I"), repr=False)
    max_issues: int = DEFAULT_MAX_ISSUES

    def add(self, issue: Issue) -> None:
        self.counts[issue.code] += 1
        if issue.severity == "error":
            self.errors += 1
        else:
            self.warnings += 1
        if len(self.issues) < self.max_issues:
            self.issues.append(Issue(issue.line, issue.pointer, issue.code, issue.severity, issue.message,
                                     issue.hint, file=self.path))

    def summary(self) -> dict:
        return {"path": self.path, "kind": self.kind, "format": self.format, "records": self.records,
                "examples": self.examples, "errors": self.errors, "warnings": self.warnings,
                "counts": dict(sorted(self.counts.items()))}


@dataclass
class Report:
    files: list[FileReport]

    @property
    def valid(self) -> bool:
        return all(f.errors == 0 for f in self.files)

    @property
    def issues(self) -> list[Issue]:
        return [i for f in self.files for i in f.issues]

    def file(self, kind: str) -> FileReport | None:
        return next((f for f in self.files if f.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        train, val = self.file("train"), self.file("validation")
        out: dict[str, Any] = {"valid": self.valid, "issues": [i.to_dict() for i in self.issues],
                               "stats": train.stats if train else {}}
        if val:
            out["validation_stats"] = val.stats
        out["files"] = [f.summary() for f in self.files]
        out["issues_listed_all"] = all(f.errors + f.warnings <= len(f.issues) for f in self.files)
        return out


@dataclass(frozen=True)
class Limits:
    """Token limit of one example and what sets it (for messages)."""

    max_length: int
    reason: str


def scan_file(path: str | Path, *, kind: str = "train", template: ChatTemplate | None = None,
              limits: Limits | None = None, columns: Columns = Columns(), epochs: int = 1,
              batch_size: int | None = None, max_issues: int = DEFAULT_MAX_ISSUES, fmt: str | None = None,
              media: md.Policy | None = None) -> FileReport:
    """One pass over a dataset file: issues, fingerprints and statistics. `fmt` reads every line as that format
    (the OpenAI upload route: a line without an assistant turn is still OpenAI chat); None detects it per line.
    `media`: the base model's modalities and the allowed roots that image, document and audio parts are checked
    against (None: only what the parts themselves show; relative file paths are relative to the dataset's folder)."""
    rep = FileReport(str(path), kind, max_issues=max_issues)
    multimodal = 0
    with open_checked(path):
        size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        rep.add(Issue(None, "", "file_too_large", "error",
                      f"expected at most 1 GiB, found {size / (1 << 30):.2f} GiB", "split the dataset"))
    stats = StatsAccumulator()
    formats: Counter[str] = Counter()
    pending: list[tuple[int, Example]] = []
    for line, obj, issue in read_records(path, columns):
        rep.records += 1
        if issue is not None:
            rep.add(issue)
            stats.drop(issue.code, line)
            continue
        ex, found, issues = parse(obj, line, columns, fmt)
        for i in issues:
            rep.add(i)
        if found:
            formats[found] += 1
        if ex is None:
            stats.drop(next(i.code for i in issues if i.severity == "error"), line)
            continue
        if ex.media:
            multimodal += 1
            ex = md.absolute(ex, Path(path).parent)
            if media is not None:
                found: list[Issue] = []
                md.check(ex.media, replace(media, base_dir=Path(path).parent),
                         lambda p, c, m, h: found.append(Issue(line, p, c, "error", m, h)))
                for i in found:
                    rep.add(i)
                if found:
                    stats.drop(found[0].code, line)
                    continue
        if template is not None:
            _check_control_text(ex, line, template, rep)
            pending.append((line, ex))
            if len(pending) >= _TOKEN_BATCH:
                _measure(pending, template, limits, rep, stats)
        else:
            _accept(line, ex, rep, stats)
    if pending:
        _measure(pending, template, limits, rep, stats)
    _file_checks(rep, formats)
    if rep.kind == "train" and multimodal > md.MAX_MULTIMODAL_EXAMPLES:
        rep.add(Issue(None, "", "too_many_examples", "error", f"expected at most {md.MAX_MULTIMODAL_EXAMPLES:,} "
                      f"multimodal training examples, found {multimodal:,}"))
    _duplicates(rep)
    rep.format = formats.most_common(1)[0][0] if formats else None
    rep.issues.sort(key=lambda i: (i.line or 0))
    rep.stats = stats.result(epochs=epochs, batch_size=batch_size)
    return rep


def _accept(line: int, ex: Example, rep: FileReport, stats: StatsAccumulator, measure=None, truncated=False) -> None:
    rep.examples += 1
    rep.hashes.append(ex.fingerprint())
    rep.lines.append(line)
    stats.add(ex, measure, truncated)


def _check_control_text(ex: Example, line: int, template: ChatTemplate, rep: FileReport) -> None:
    texts = [ex.system or ""] + [t.text for t in ex.turns]
    found = next((c for c in template.control_strings if any(c in t for t in texts)), None)
    if found:
        rep.add(Issue(line, "", "special_token_in_text", "warning",
                      f"text contains the control token {found!r}; it is trained on as plain text, not as a turn marker",
                      "write each turn as its own entry instead of embedding chat markup"))


def _measure(pending: list[tuple[int, Example]], template: ChatTemplate, limits: Limits | None,
             rep: FileReport, stats: StatsAccumulator) -> None:
    max_len = limits.max_length if limits else None
    for (line, ex), m in zip(pending, template.measure_batch([ex for _, ex in pending], max_len)):
        over = max_len is not None and m.total > max_len
        if over and m.kept_supervised == 0:
            rep.add(Issue(line, "", "no_supervised_tokens", "error",
                          f"expected model-turn tokens within the first {max_len:,} tokens ({limits.reason}), "
                          f"found none: the example has {m.total:,} tokens and its answer starts after the cut",
                          "shorten the prompt, or raise --max-length up to the base model's limit"))
            stats.drop("no_supervised_tokens", line)
            continue
        if over:
            rep.add(Issue(line, "", "example_too_long", "warning",
                          f"expected at most {max_len:,} tokens ({limits.reason}), found {m.total:,}; the example "
                          f"will be truncated, keeping {m.kept_supervised:,} of {m.supervised:,} supervised tokens",
                          "shorten the example to train on all of it"))
        _accept(line, ex, rep, stats, m, over)
    pending.clear()


def _file_checks(rep: FileReport, formats: Counter) -> None:
    if rep.records == 0:
        rep.add(Issue(None, "", "empty_file", "error", "expected at least one example, found an empty file"
                      if os.path.getsize(rep.path) == 0 else "expected at least one example, found only blank lines"))
        return
    if rep.kind == "train" and rep.records > MAX_TRAIN_EXAMPLES:
        rep.add(Issue(None, "", "too_many_examples", "error",
                      f"expected at most {MAX_TRAIN_EXAMPLES:,} training examples, found {rep.records:,}"))
    if rep.kind == "validation" and rep.records > MAX_VALIDATION_EXAMPLES:
        rep.add(Issue(None, "", "too_many_validation_examples", "error",
                      f"expected at most {MAX_VALIDATION_EXAMPLES:,} validation examples, found {rep.records:,}",
                      "validation runs during training; sample it down"))
    if rep.kind == "train" and rep.records < MIN_RECOMMENDED_EXAMPLES:
        rep.add(Issue(None, "", "too_few_examples", "warning",
                      f"found {rep.records} examples; at least {MIN_RECOMMENDED_EXAMPLES} are recommended for tuning"))
    if len(formats) > 1:
        mix = ", ".join(f"{n} {f}" for f, n in formats.most_common())
        rep.add(Issue(None, "", "mixed_formats", "warning", f"expected one format per file, found {mix}",
                      "`tunery convert` rewrites a file into one format"))


def _fingerprints(rep: FileReport) -> tuple[np.ndarray, np.ndarray]:
    return np.frombuffer(rep.hashes, dtype=np.uint64), np.frombuffer(rep.lines, dtype=np.uint32)


def _duplicates(rep: FileReport) -> None:
    """Warn on each repeated conversation, naming the line of its first occurrence (sort, not a hash table)."""
    h, lines = _fingerprints(rep)
    if h.size < 2:
        return
    order = np.argsort(h, kind="stable")
    hs = h[order]
    starts = np.r_[True, hs[1:] != hs[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(hs.size), 0))
    for i in np.flatnonzero(~starts):
        rep.add(Issue(int(lines[order[i]]), "", "duplicate_example", "warning",
                      f"same conversation as line {int(lines[order[first[i]]])}",
                      "duplicates weigh an example more than others; remove them unless intended"))


def overlap(train: FileReport, val: FileReport) -> None:
    """Warn on validation examples that also appear in the training file."""
    th, tl = _fingerprints(train)
    vh, vl = _fingerprints(val)
    if not th.size or not vh.size:
        return
    order = np.argsort(th, kind="stable")
    ts = th[order]
    pos = np.searchsorted(ts, vh)
    hit = (pos < ts.size) & (ts[np.minimum(pos, ts.size - 1)] == vh)
    for k in np.flatnonzero(hit):
        val.add(Issue(int(vl[k]), "", "train_validation_overlap", "warning",
                      f"also in the training file at line {int(tl[order[pos[k]]])}",
                      "validation examples seen in training overstate how well the model generalises"))
    val.issues.sort(key=lambda i: (i.line or 0))


def validate(train: str | Path, validation: str | Path | None = None, *, template: ChatTemplate | None = None,
             limits: Limits | None = None, columns: Columns = Columns(), epochs: int = 1,
             batch_size: int | None = None, max_issues: int = DEFAULT_MAX_ISSUES, fmt: str | None = None,
             media: md.Policy | None = None) -> Report:
    """Validate a training file (and optionally a validation file). With a template, token limits are checked
    and token statistics computed; without one, only the schema is checked."""
    kw = dict(template=template, limits=limits, columns=columns, epochs=epochs, batch_size=batch_size,
              max_issues=max_issues, fmt=fmt, media=media)
    files = [scan_file(train, kind="train", **kw)]
    if validation is not None:
        files.append(scan_file(validation, kind="validation", **kw))
        overlap(files[0], files[1])
    return Report(files)
