"""Append-only schema migrations. Never edit one that has shipped; add the next."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_jobs_models_endpoints(db: sqlite3.Connection) -> None:
    _run(db, """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        location TEXT NOT NULL,
        state TEXT NOT NULL,
        detail_state TEXT,
        request TEXT NOT NULL,            -- the validated create request (JSON)
        create_time TEXT NOT NULL,
        update_time TEXT NOT NULL,
        start_time TEXT,
        end_time TEXT,
        error TEXT,                       -- google.rpc.Status (JSON)
        stats TEXT,                       -- supervisedTuningDataStats (JSON)
        metadata TEXT,                    -- tuningJobMetadata (JSON)
        run_dir TEXT NOT NULL,
        model_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_place ON jobs (project, location, create_time);
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        location TEXT NOT NULL,
        job_id TEXT NOT NULL,
        display_name TEXT,
        description TEXT,
        base_model TEXT NOT NULL,         -- registry name the adapter was trained on
        adapter_dir TEXT NOT NULL,
        checkpoints TEXT NOT NULL,        -- [{checkpointId, epoch, step, path}] (JSON)
        labels TEXT,
        create_time TEXT NOT NULL,
        update_time TEXT NOT NULL
    );
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        location TEXT NOT NULL,
        model_id TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        checkpoint_id TEXT,               -- NULL: the model's final adapter
        create_time TEXT NOT NULL
    );
    """)


@migration
def m002_job_crashes(db: sqlite3.Connection) -> None:
    # attempts counts launches; crashes counts tuning processes that died without a result (server restarts are
    # neither): only crashes can fail a job
    _run(db, "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")


@migration
def m003_endpoint_deployment_experiments_operations(db: sqlite3.Connection) -> None:
    """Endpoints can be undeployed (kept, serving nothing) and deleted on their own; a job's Vertex Experiment
    context and its run context can be deleted (the metrics stay with the job); long-running operations are kept
    so `operations.get` answers for them."""
    _run(db, """
    ALTER TABLE endpoints ADD COLUMN deployed INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN experiment_deleted INTEGER NOT NULL DEFAULT 0;  -- 1: run context gone, 2: both gone
    CREATE TABLE operations (
        name TEXT PRIMARY KEY,            -- projects/{p}/locations/{l}/operations/{id}
        body TEXT NOT NULL,               -- the google.longrunning.Operation (JSON)
        create_time TEXT NOT NULL
    )
    """)


@migration
def m004_openai_files(db: sqlite3.Connection) -> None:
    """Files uploaded through the OpenAI-compatible API (POST /v1/files); their bytes live under the home."""
    _run(db, """
    CREATE TABLE files (
        id TEXT PRIMARY KEY,              -- file-<hex>
        filename TEXT NOT NULL,           -- as the client named it
        purpose TEXT NOT NULL,            -- fine-tune
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,      -- Unix seconds, as OpenAI sends it
        path TEXT NOT NULL                -- where the bytes are (a training dataset URI)
    );
    CREATE INDEX files_by_time ON files (created_at, id)
    """)


# the legacy request's hyperParameters names -> TuningConfig's (m005)
_LEGACY_HP = {"epochCount": "epochs", "learningRateMultiplier": "learning_rate_multiplier",
              "learningRate": "learning_rate", "adapterSize": "adapter_size", "batchSize": "batch_size",
              "earlyStoppingPatience": "early_stopping_patience", "maxLength": "max_length", "loraAlpha": "lora_alpha",
              "loraTargets": "lora_targets", "learningRateSchedule": "lr_schedule"}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _legacy_spec(req: dict) -> dict:
    """A version-1 job spec from a row stored before m005: the client's body with the server's fields (`_config`,
    `_evaluation`, `_workers`, `_openai`, `requestedBaseModel`) beside it. Only what the server resolved is kept;
    values of the wrong type (a client could plant them before create refused such fields) are dropped."""
    cfg = req.get("_config") if isinstance(req.get("_config"), dict) else {}
    sup = req.get("supervisedTuningSpec") if isinstance(req.get("supervisedTuningSpec"), dict) else {}
    hp = sup.get("hyperParameters") if isinstance(sup.get("hyperParameters"), dict) else {}
    sent = [_LEGACY_HP.get(k) or k for k in hp]
    pre = req.get("preTunedModel") if isinstance(req.get("preTunedModel"), dict) else None
    pre_name = pre and _text(pre.get("tunedModelName") or pre.get("tuned_model_name"))
    oa = req.get("_openai") if isinstance(req.get("_openai"), dict) else None
    ev = req.get("_evaluation") if isinstance(req.get("_evaluation"), dict) else None
    labels = req.get("labels") if isinstance(req.get("labels"), dict) else {}
    workers = req.get("_workers")
    return {"v": 1, "door": "openai" if oa else "vertex", "base_model": _text(req.get("baseModel")) or "",
            "tuning": {"train": _text(sup.get("trainingDatasetUri")) or "",
                       **{k: v for k, v in cfg.items() if k not in ("output", "save_interval_seconds")}},
            "train_uri": _text(sup.get("trainingDatasetUri")) or _text(cfg.get("train")) or "",
            "validation_uri": _text(sup.get("validationDatasetUri")),
            "requested_base_model": _text(req.get("requestedBaseModel")),
            "explicit": [k for k in sent if k in cfg],
            "evaluation": {k: ev[k] for k in ("dataset", "task", "limit", "max_output_tokens", "temperature") if k in ev}
            if ev else None,
            "workers": workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1 else 1,
            "pre_tuned": {"model_id": pre_name.rsplit("/", 1)[-1].split("@")[0],
                          "checkpoint_id": _text(pre.get("checkpointId") or pre.get("checkpoint_id"))} if pre_name else None,
            "display_name": _text(req.get("tunedModelDisplayName")), "description": _text(req.get("description")),
            "labels": {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)},
            "openai": {k: oa.get(k) for k in ("training_file", "validation_file", "suffix", "seed", "metadata")}
            if oa and _text(oa.get("training_file")) else None}


@migration
def m005_typed_job_specs(db: sqlite3.Connection) -> None:
    """jobs.request (the client's body with the server's fields beside it) becomes jobs.spec, a versioned
    JobSpec (tunery/jobs/spec.py): no request body is stored any more."""
    import json

    db.execute("ALTER TABLE jobs RENAME COLUMN request TO spec")
    for job_id, text in db.execute("SELECT id, spec FROM jobs").fetchall():
        try:
            req = json.loads(text)
        except ValueError:
            req = {}
        spec = _legacy_spec(req if isinstance(req, dict) else {})
        db.execute("UPDATE jobs SET spec = ? WHERE id = ?", (json.dumps(spec), job_id))


def _run(db: sqlite3.Connection, script: str) -> None:
    """Execute statements one by one (executescript would COMMIT the migration's transaction early)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this database has not seen; returns the schema version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, fn in enumerate(MIGRATIONS[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
