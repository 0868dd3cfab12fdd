"""Settings read from the environment and `$TUNERY_HOME/config.toml`, typed once here."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ConfigError

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def home() -> Path:
    """The tunery home: `$TUNERY_HOME`, else `~/.tunery`. Caches, jobs and artifacts live here."""
    return Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery").expanduser()


@dataclass(frozen=True)
class Settings:
    """User settings. `config.toml` example:

        default_base_model = "gemma-3-270m"
        [aliases]
        "gemini-2.0-flash-001" = "smollm2-135m-instruct"
    """

    default_base_model: str = DEFAULT_BASE_MODEL  # what Gemini aliases and an omitted --base-model mean
    aliases: dict[str, str] = field(default_factory=dict)  # extra or overriding name -> model mappings
    executor: str = "local"  # `tunery serve`: where jobs run, "local" or "ray"
    ray_address: str | None = None  # the Ray dashboard URL for executor "ray" (its token: RAY_AUTH_TOKEN, never here)
    ray_python: str | None = None  # the interpreter Ray runs jobs with (one that imports tunery and ray)
    artifacts: str | None = None  # where job run dirs live (storage every Ray node sees)


def load_settings(root: Path | None = None) -> Settings:
    """Read `config.toml` under the home (if present); `TUNERY_DEFAULT_BASE_MODEL` overrides the default."""
    path = (root or home()) / "config.toml"
    data: dict = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    default = os.environ.get("TUNERY_DEFAULT_BASE_MODEL") or data.get("default_base_model", DEFAULT_BASE_MODEL)
    aliases = data.get("aliases", {})
    if not isinstance(default, str) or not default:
        raise ConfigError(f"{path}: default_base_model", f"expected a model name, found {default!r}")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigError(f"{path}: [aliases]", "expected a table of name = \"model\" strings")
    executor, ray_address, artifacts = data.get("executor", "local"), data.get("ray_address"), data.get("artifacts")
    ray_python = data.get("ray_python")
    if executor not in ("local", "ray"):
        raise ConfigError(f"{path}: executor", f"expected \"local\" or \"ray\", found {executor!r}")
    for key, value in (("ray_address", ray_address), ("artifacts", artifacts), ("ray_python", ray_python)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {key}", f"expected a string, found {value!r}")
    return Settings(default_base_model=default, aliases=dict(aliases), executor=executor, ray_address=ray_address,
                    artifacts=artifacts, ray_python=ray_python)


# ---------------------------------------------------------------- tuning hyperparameters

ADAPTER_SIZES = (1, 2, 4, 8, 16)  # Vertex's ADAPTER_SIZE_ONE..SIXTEEN; the LoRA rank
DEFAULT_ADAPTER_SIZE = 16  # the quality bench's best rank, within the 2 GB memory goal (docs/training.md)
PREFERENCE_BASE_LEARNING_RATE = 2e-4  # DPO's: at 2e-3 the alerts' SFT+DPO run lost its format (ROUGE-L 0.83 -> 0.15)
BASE_LEARNING_RATE = 2e-3  # peak LR at learningRateMultiplier 1.0, chosen by bench/quality_bench.py (docs/training.md)
DEFAULT_BATCH_SIZE = 8  # examples per optimizer step


def default_lora_alpha(rank: int) -> float:
    """LoRA alpha when none is set: 2 x rank, an update scale of 2 (kept against alpha 16 by the bench: docs/training.md)."""
    return 2 * rank

# Which linear layers get adapters: every one of the decoder, or only the attention block's or the MLP's.
LORA_TARGETS = {"all-linear": "all-linear", "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "mlp": ["gate_proj", "up_proj", "down_proj"]}
METHODS = ("supervised", "preference")
LR_SCHEDULES = ("linear", "cosine", "constant")  # after the warmup: down to zero linearly or on a cosine, or flat
MAX_EPOCHS = 100
# What a request may set, defined once: whole numbers (int bounds) lo..hi; numbers (float bounds) in (lo, hi].
# TuningConfig and both APIs' parsers (and so the console and the CLI) check against these.
RANGES = {"epochs": (1, MAX_EPOCHS), "learning_rate_multiplier": (0.0, 100.0), "learning_rate": (0.0, 1.0),
          "beta": (0.0, 2.0),  # DPO's KL weight (OpenAI's range); Vertex and OpenAI default to 0.1
          "batch_size": (1, 4096), "lora_alpha": (0.0, 1024.0), "max_length": (8, 131_072),
          "early_stopping_patience": (1, 100)}


def default_epochs(n_examples: int) -> int:
    """Vertex picks the epoch count from the dataset size; tunery shows the model about 1,000 examples,
    between 1 and 10 epochs: 100 examples -> 10, 240 -> 5, 1,000 or more -> 1."""
    return max(1, min(10, -(-1000 // max(1, n_examples))))


@dataclass(frozen=True)
class TuningConfig:
    """One supervised tuning run. Field names follow Vertex's hyperParameters where it has them."""

    train: str  # training dataset (any supported format)
    output: str  # run directory: metrics, checkpoints, the final adapter, manifest.json
    validation: str | None = None  # evaluated at intervals and at the end
    base_model: str | None = None  # registry name, Gemini alias, local dir or hub id; None: the default
    epochs: int | None = None  # None: default_epochs(number of training examples)
    learning_rate_multiplier: float = 1.0  # times BASE_LEARNING_RATE
    learning_rate: float | None = None  # absolute peak LR; overrides the multiplier (Vertex's learningRate)
    adapter_size: int = DEFAULT_ADAPTER_SIZE  # LoRA rank
    lora_alpha: float | None = None  # LoRA alpha (the update is scaled by alpha / rank); None: 2 x rank
    lora_targets: str = "all-linear"  # a key of LORA_TARGETS
    lr_schedule: str = "linear"  # a LR_SCHEDULES entry, after the linear warmup
    batch_size: int = DEFAULT_BATCH_SIZE  # examples per optimizer step
    max_length: int | None = None  # tokens per example; None: the base model's limit
    seed: int = 0  # data order and LoRA initialisation
    export_last_checkpoint_only: bool = False  # keep only the final checkpoint
    save_interval_seconds: float = 60.0  # resume state is saved at least this often (and at every checkpoint)
    init_adapter: str | None = None  # continue tuning from this adapter directory (Vertex preTunedModel)
    early_stopping_patience: int | None = None  # stop after this many validation passes without a better loss
    media_roots: tuple[str, ...] | None = None  # image, PDF and audio files only under these (a server's allowed roots)
    method: str = "supervised"  # a METHODS entry: "supervised" (SFT) or "preference" (DPO on preference pairs)
    beta: float = 0.1  # preference tuning: how far the tuned model may move from the reference (DPO's beta)

    def __post_init__(self) -> None:
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            whole = isinstance(lo, int)
            if value is not None and not (lo <= value <= hi if whole else lo < value <= hi):
                expected = f"a whole number from {lo} to {hi}" if whole else f"a number in ({lo:g}, {hi:g}]"
                raise ConfigError("--" + name.replace("_", "-"), f"expected {expected}, found {value}")
        if self.adapter_size not in ADAPTER_SIZES:
            raise ConfigError("--adapter-size", f"expected one of {', '.join(map(str, ADAPTER_SIZES))}, found {self.adapter_size}")
        if self.lora_targets not in LORA_TARGETS:
            raise ConfigError("--lora-targets", f"expected one of {', '.join(LORA_TARGETS)}, found {self.lora_targets!r}")
        if self.method not in METHODS:
            raise ConfigError("--method", f"expected one of {', '.join(METHODS)}, found {self.method!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError("--lr-schedule", f"expected one of {', '.join(LR_SCHEDULES)}, found {self.lr_schedule!r}")
        if self.early_stopping_patience and not self.validation:
            raise ConfigError("--early-stopping-patience", "expected a validation dataset to watch, found none",
                              hint="add --validation FILE")
        if self.save_interval_seconds < 0:
            raise ConfigError("save_interval_seconds", f"expected >= 0, found {self.save_interval_seconds}")

    @property
    def peak_learning_rate(self) -> float:
        base = PREFERENCE_BASE_LEARNING_RATE if self.method == "preference" else BASE_LEARNING_RATE
        return self.learning_rate if self.learning_rate is not None else base * self.learning_rate_multiplier

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else default_lora_alpha(self.adapter_size)

    def hyperparameters(self, epochs: int) -> dict:
        """What must match for a run directory to be resumed, and what manifests record."""
        return {"epochs": epochs, "learning_rate": self.peak_learning_rate, "learning_rate_multiplier": self.learning_rate_multiplier,
                "adapter_size": self.adapter_size, "lora_alpha": self.alpha, "batch_size": self.batch_size,
                "max_length": self.max_length, "seed": self.seed, "export_last_checkpoint_only": self.export_last_checkpoint_only,
                "init_adapter": self.init_adapter,
                # recorded when not the default, so runs begun before these settings existed still resume
                **({"lora_targets": self.lora_targets} if self.lora_targets != "all-linear" else {}),
                **({"lr_schedule": self.lr_schedule} if self.lr_schedule != "linear" else {}),
                **({"early_stopping_patience": self.early_stopping_patience} if self.early_stopping_patience else {}),
                **({"method": self.method, "beta": self.beta} if self.method != "supervised" else {})}
