"""Errors a user can cause. Each carries where it happened and what was expected; nothing else lives here."""

from __future__ import annotations


class TuneryError(Exception):
    """Base class: a problem with the user's input, files or settings (never a bug in tunery)."""

    code = "error"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(TuneryError):
    """A setting or hyperparameter is out of range; `field` names the flag or JSON field."""

    code = "invalid_argument"

    def __init__(self, field: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"{field}: {message}", hint=hint)
        self.field = field


class DatasetError(TuneryError):
    """A dataset file cannot be used at all (missing, unreadable, not a supported format)."""

    code = "invalid_dataset"

    def __init__(self, path: str, message: str, *, line: int | None = None, hint: str = "") -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.line = line


class ModelNotFoundError(TuneryError):
    """A base model name resolves to nothing we can load."""

    code = "model_not_found"


class ModelIntegrityError(TuneryError):
    """Model weights on disk are not the bytes we expect (checksum mismatch, pickle-only checkpoint)."""

    code = "model_integrity"


class TrainingError(TuneryError):
    """A run cannot continue: non-finite loss, out of memory, an unusable dataset."""

    code = "training_failed"


class RequestError(TuneryError):
    """A request the job service refuses. `field` is the request's field as tunery names it (e.g. "train",
    "hyperparameters.adapter_size"): each door maps it to its own spelling. `status` is the google.rpc code name
    (INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED)."""

    code = "invalid_argument"
    method: str | None = None  # the tuning method of the job the request asked for, where known (its field names)

    def __init__(self, field: str, detail: str, *, status: str = "INVALID_ARGUMENT", hint: str = "",
                 values: dict | None = None) -> None:
        """`values`: request values named in `detail` as {name} (a door spells them its way; here, repr)."""
        shown = detail.format(**{k: repr(v) for k, v in values.items()}) if values else detail
        super().__init__(f"{field}: {shown}" if field else shown, hint=hint)
        self.field, self.detail, self.status, self.values = field, detail, status, values or {}
