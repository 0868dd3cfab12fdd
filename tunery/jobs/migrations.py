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
