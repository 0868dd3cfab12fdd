"""Evaluation metrics: pure functions over predictions and references, one per seed task.

    summarization   ROUGE-1/2/L precision, recall and F-measure (rouge-score with the Porter stemmer, as the seed
                    notebook), the mean over examples
    qa              exact_match and f1 with the seed notebook's normalisation (lower-case, collapse whitespace),
                    and squad_exact_match / squad_f1 with the standard SQuAD one (also drop punctuation and
                    the articles a/an/the); means over examples
    classification  accuracy, micro_f1, macro_f1 over the reference classes (scikit-learn), per-class
                    precision/recall/F1/support and a confusion matrix whose last column counts predictions
                    that are no class at all
    generation      bleu and chrf (sacrebleu, corpus level) and ROUGE-L, the seed's text-generation metrics

Every task also gives one score per example (`Scores.per_example`), which the report uses to list the examples
a tuning fixed and the ones it regressed: rougeL_fmeasure, f1, 1/0 correct, sentence chrF respectively.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

TASKS = ("summarization", "qa", "classification", "generation")
OTHER = "(other)"  # confusion-matrix column of predictions that match no reference class

# The headline metric of each task: what `compare` and the demo print first.
PRIMARY = {"summarization": "rougeL_fmeasure", "qa": "f1", "classification": "macro_f1", "generation": "bleu"}


@dataclass
class Scores:
    metrics: dict[str, float]  # flat name -> value; what the report tables compare
    per_example: list[float]  # one comparable score per example (higher is better)
    details: dict = field(default_factory=dict)  # per_class and confusion_matrix for classification


def score(task: str, predictions: Sequence[str], references: Sequence[str]) -> Scores:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return {"summarization": rouge, "qa": qa, "classification": classification, "generation": generation}[task](
        list(predictions), list(references))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


# ---------------------------------------------------------------- summarization

_SCORER = None


def rouge(predictions: list[str], references: list[str]) -> Scores:
    global _SCORER
    from rouge_score import rouge_scorer

    if _SCORER is None:
        logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer." at INFO
        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    each = [_SCORER.score(target=r, prediction=p) for p, r in zip(predictions, references)]
    metrics = {f"{kind}_{part}": _mean([getattr(s[kind], part) for s in each])
               for kind in ("rouge1", "rouge2", "rougeL") for part in ("precision", "recall", "fmeasure")}
    return Scores(metrics, [s["rougeL"].fmeasure for s in each])


# ---------------------------------------------------------------- question answering

def normalize_seed(text: str) -> str:
    """The seed notebook's `normalize_answer`: lower-case and collapse whitespace."""
    return " ".join(text.lower().split())


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_squad(text: str) -> str:
    """The official SQuAD v1.1 evaluation script's normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str, normalize=normalize_seed) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa(predictions: list[str], references: list[str]) -> Scores:
    f1 = [token_f1(p, r) for p, r in zip(predictions, references)]
    metrics = {
        "exact_match": _mean([float(normalize_seed(p) == normalize_seed(r)) for p, r in zip(predictions, references)]),
        "f1": _mean(f1),
        "squad_exact_match": _mean([float(normalize_squad(p) == normalize_squad(r))
                                    for p, r in zip(predictions, references)]),
        "squad_f1": _mean([token_f1(p, r, normalize_squad) for p, r in zip(predictions, references)]),
    }
    return Scores(metrics, f1)


# ---------------------------------------------------------------- classification

def normalize_label(text: str) -> str:
    """A predicted or reference class: trimmed, lower-case, without surrounding quotes or a final full stop."""
    return text.strip().strip("\"'`").strip().rstrip(".").strip().lower()


def classification(predictions: list[str], references: list[str]) -> Scores:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    truth = [normalize_label(r) for r in references]
    labels = sorted(set(truth))
    pred = [p if p in labels else OTHER for p in (normalize_label(p) for p in predictions)]
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=labels, average=None,
                                                                     zero_division=0)
    metrics = {"accuracy": float(accuracy_score(truth, pred)),
               "micro_f1": float(f1_score(truth, pred, labels=labels, average="micro", zero_division=0)),
               "macro_f1": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0))}
    columns = labels + ([OTHER] if OTHER in pred else [])
    matrix = confusion_matrix(truth, pred, labels=columns)[: len(labels)]
    details = {"per_class": {lab: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                             for lab, p, r, f, s in zip(labels, precision, recall, f1, support)},
               "confusion_matrix": {"labels": labels, "predicted": columns, "matrix": matrix.tolist()}}
    return Scores(metrics, [float(p == t) for p, t in zip(pred, truth)], details)


# ---------------------------------------------------------------- text generation

def generation(predictions: list[str], references: list[str]) -> Scores:
    import sacrebleu

    metrics = {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
               "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score)}
    r = rouge(predictions, references)
    metrics |= {k: v for k, v in r.metrics.items() if k.startswith("rougeL")}
    return Scores(metrics, [float(sacrebleu.sentence_chrf(p, [t]).score) for p, t in zip(predictions, references)])


def improvement(base: float, tuned: float) -> float | None:
    """The seeds' improvement: (tuned - base) / base x 100; None when the base scored 0."""
    return None if base == 0 else (tuned - base) / base * 100


# ---------------------------------------------------------------- output format (the alert-summary demo)

def line_keys(text: str) -> list[str]:
    """The 'Key' of every 'Key: value' line, plus bare header lines, in order."""
    keys = []
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            keys.append(line.split(":", 1)[0].strip() if ":" in line else line)
    return keys


def format_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions whose line structure (header and 'Key:' sequence) equals the reference's:
    did the model learn the output format, whatever the values?"""
    if not references:
        return 0.0
    return sum(line_keys(p) == line_keys(r) for p, r in zip(predictions, references)) / len(references)
