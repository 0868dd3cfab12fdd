"""What a tuning job is, typed: `JobRequest` (what a door parsed from its client, nothing resolved yet) and
`JobSpec` (what the job service resolved and the store keeps, versioned). No request body is ever stored: a door
parses its wire format into a JobRequest, and the service turns that into the JobSpec every other part reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tunery.config import TuningConfig

SCHEMA = 1  # the stored spec's version ("v"); tunery/jobs/migrations.py brings older rows to it
DOORS = ("vertex", "openai", "console", "cli")
# TuningConfig fields a request may set (the rest are the datasets, the base model and the server's own)
HYPERPARAMETERS = ("epochs", "learning_rate_multiplier", "learning_rate", "adapter_size", "lora_alpha",
                   "lora_targets", "lr_schedule", "batch_size", "max_length", "seed", "export_last_checkpoint_only",
                   "early_stopping_patience", "method", "beta")


@dataclass(frozen=True)
class PreTuned:
    """Continue tuning from this tuned model (Vertex's preTunedModel)."""

    model_id: str
    checkpoint_id: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """The before/after evaluation run when tuning ends (Vertex's evaluationConfig)."""

    dataset: str | None  # resolved by the service; None in a request: the validation dataset
    task: str | None = None  # summarization, qa, classification, generation; None: inferred from the references
    limit: int = 100  # examples
    max_output_tokens: int = 256
    temperature: float = 0.0


@dataclass(frozen=True)
class OpenAIFields:
    """What the OpenAI view of a job shows beyond the Vertex one (a job created through /v1/fine_tuning/jobs)."""

    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True)
class JobRequest:
    """A create request from any door, parsed and type-checked there, not yet resolved (datasets, base model,
    defaults). `hyperparameters` holds HYPERPARAMETERS fields the client set, nothing else."""

    door: str
    train: str  # the training dataset's URI as the client gave it
    base_model: str | None = None  # None with pre_tuned: the tuned model's base
    validation: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    workers: int = 1
    pre_tuned: PreTuned | None = None
    display_name: str | None = None
    description: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    openai: OpenAIFields | None = None
    warnings: tuple[str, ...] = ()  # fields the door accepted and tunery does not use, said on the job

    def __post_init__(self) -> None:
        assert self.door in DOORS, self.door
        assert set(self.hyperparameters) <= set(HYPERPARAMETERS), sorted(self.hyperparameters)


@dataclass(frozen=True)
class JobSpec:
    """A job as the store keeps it: every choice resolved, so a job queued (or interrupted) before an upgrade that
    changes a default runs, and resumes, with the settings it was created under."""

    door: str  # which door created it: vertex, openai, console or cli
    base_model: str  # the registry name it tunes
    tuning: TuningConfig  # datasets resolved, every default filled in; `output` is set by the tuning process
    train_uri: str  # the datasets as the client named them (shown back to it)
    validation_uri: str | None = None
    requested_base_model: str | None = None  # the base model as the client named it, when not the registry name
    explicit: tuple[str, ...] = ()  # the HYPERPARAMETERS the client set (the rest are defaults)
    evaluation: Evaluation | None = None
    workers: int = 1  # data-parallel workers (the Ray executor)
    pre_tuned: PreTuned | None = None
    display_name: str | None = None
    description: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    openai: OpenAIFields | None = None
    warnings: tuple[str, ...] = ()

    def sent(self) -> dict[str, Any]:
        """The hyperparameters the client set, by TuningConfig name."""
        return {k: getattr(self.tuning, k) for k in self.explicit}

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["tuning"] = {k: v for k, v in out["tuning"].items() if k not in ("output", "save_interval_seconds")}
        out["explicit"], out["warnings"] = list(self.explicit), list(self.warnings)
        return {"v": SCHEMA, **out}

    @classmethod
    def from_json(cls, data: dict) -> "JobSpec":
        """A stored spec (the store migrates older versions before anything reads them)."""
        if data.get("v") != SCHEMA:
            raise ValueError(f"job spec version {data.get('v')!r}, expected {SCHEMA}")
        d = {k: v for k, v in data.items() if k != "v"}
        known = {f.name for f in dataclasses.fields(TuningConfig)} - {"output"}
        d["tuning"] = TuningConfig(**{k: v for k, v in d["tuning"].items() if k in known}, output="")
        d["explicit"], d["warnings"] = tuple(d.get("explicit") or ()), tuple(d.get("warnings") or ())
        for key, kind in (("evaluation", Evaluation), ("pre_tuned", PreTuned), ("openai", OpenAIFields)):
            if d.get(key) is not None:
                d[key] = kind(**d[key])
        return cls(**d)
