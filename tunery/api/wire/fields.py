"""The job service names a request's fields its own way ("train", "hyperparameters.epochs"); each API names them
its way. These maps turn a service error into the field path the client sent."""

from __future__ import annotations

from tunery.errors import RequestError

HP_VERTEX = {"epochs": "epochCount", "learning_rate_multiplier": "learningRateMultiplier",
              "learning_rate": "learningRate", "adapter_size": "adapterSize", "batch_size": "batchSize",
              "early_stopping_patience": "earlyStoppingPatience", "max_length": "maxLength", "lora_alpha": "loraAlpha",
              "lora_targets": "loraTargets", "lr_schedule": "learningRateSchedule"}
VERTEX = {"train": "supervisedTuningSpec.trainingDatasetUri", "validation": "supervisedTuningSpec.validationDatasetUri",
          "base_model": "baseModel", "evaluation": "supervisedTuningSpec.evaluationConfig",
          "evaluation.dataset": "supervisedTuningSpec.evaluationConfig.datasetUri",
          "pre_tuned.model": "preTunedModel.tunedModelName", "pre_tuned.checkpoint_id": "preTunedModel.checkpointId",
          "hyperparameters.export_last_checkpoint_only": "supervisedTuningSpec.exportLastCheckpointOnly",
          **{f"hyperparameters.{k}": f"supervisedTuningSpec.hyperParameters.{v}" for k, v in HP_VERTEX.items()}}
# a preference (DPO) job's fields live under preferenceOptimizationSpec
PREFERENCE_VERTEX = {k: v.replace("supervisedTuningSpec.", "preferenceOptimizationSpec.") for k, v in VERTEX.items()}
OPENAI = {"train": "training_file", "validation": "validation_file", "base_model": "model",
          "hyperparameters.epochs": "hyperparameters.n_epochs", "hyperparameters.seed": "seed"}


# how the Vertex API spells a value of these fields (what the request would have sent)
ADAPTER_SIZES = {"ADAPTER_SIZE_ONE": 1, "ADAPTER_SIZE_TWO": 2, "ADAPTER_SIZE_FOUR": 4, "ADAPTER_SIZE_EIGHT": 8,
                 "ADAPTER_SIZE_SIXTEEN": 16}  # Vertex's adapterSize enum: the LoRA rank
ADAPTER_SIZE_NAMES = {v: k for k, v in ADAPTER_SIZES.items()}
VERTEX_VALUES = {"hyperparameters.adapter_size": lambda v: ADAPTER_SIZE_NAMES.get(v, repr(v)),
                 "hyperparameters.lora_targets": lambda v: str(v).upper().replace("-", "_")}


def named(exc: RequestError, names: dict[str, str]) -> str:
    """The error's message with its field as `names` spell it (and its values, for the Vertex names)."""
    field = names.get(exc.field, exc.field)
    spell = VERTEX_VALUES.get(exc.field, repr) if names in (VERTEX, PREFERENCE_VERTEX) else repr
    detail = exc.detail.format(**{k: spell(v) for k, v in exc.values.items()}) if exc.values else exc.detail
    text = f"{field}: {detail}" if field else detail
    return f"{text} ({exc.hint})" if exc.hint else text


def vertex(exc: RequestError) -> dict[str, str]:
    """The Vertex names for the job the error is about: its method's tuning spec."""
    return PREFERENCE_VERTEX if exc.method == "preference" else VERTEX
