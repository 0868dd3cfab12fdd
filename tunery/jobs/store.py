"""The only module that speaks SQL: jobs, tuned models and endpoints in one SQLite file (WAL mode).

State changes run in BEGIN IMMEDIATE transactions and go through `states.check`, so two threads (or a worker and
an API request) can never move a job along an illegal path.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunery.jobs import states
from tunery.jobs.migrations import migrate
from tunery.jobs.spec import JobSpec


def now() -> str:
    """RFC 3339 UTC timestamp with microseconds, as Vertex sends them."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    """A numeric resource id like Vertex's (19 digits): time-ordered, with random low digits."""
    return str(time.time_ns() // 1000 * 1000 + secrets.randbelow(1000))[-19:].rjust(19, "1")


def _loads(v: str | None) -> Any:
    return json.loads(v) if v else None


@dataclass(frozen=True)
class Job:
    id: str
    project: str
    location: str
    state: str
    detail_state: str | None
    spec: JobSpec
    create_time: str
    update_time: str
    start_time: str | None
    end_time: str | None
    error: dict | None
    stats: dict | None
    metadata: dict | None
    run_dir: str
    model_id: str | None
    attempts: int  # tuning processes started for this job
    crashes: int  # of those, how many died without a result (server restarts do not count)
    experiment_deleted: int = 0  # EXPERIMENT_LIVE, RUN_CONTEXT_DELETED or EXPERIMENT_DELETED

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/tuningJobs/{self.id}"


@dataclass(frozen=True)
class Model:
    id: str
    project: str
    location: str
    job_id: str
    display_name: str | None
    description: str | None
    base_model: str
    adapter_dir: str
    checkpoints: list[dict]
    labels: dict | None
    create_time: str
    update_time: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/models/{self.id}"


@dataclass(frozen=True)
class Endpoint:
    id: str
    project: str
    location: str
    model_id: str
    checkpoint_id: str | None
    create_time: str
    deployed: int = 1  # 0 once undeployed: the endpoint stays, serving nothing

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/endpoints/{self.id}"


@dataclass(frozen=True)
class File:
    """A file uploaded through the OpenAI-compatible API."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: str


EXPERIMENT_LIVE, RUN_CONTEXT_DELETED, EXPERIMENT_DELETED = 0, 1, 2


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    for key in ("error", "stats", "metadata"):
        d[key] = _loads(d[key])
    d["spec"] = JobSpec.from_json(json.loads(d["spec"]))
    return Job(**d)


def _model(row: sqlite3.Row) -> Model:
    d = dict(row)
    d["checkpoints"], d["labels"] = json.loads(d["checkpoints"]), _loads(d["labels"])
    return Model(**d)


class Store:
    """Thread-safe access to tunery.db: one connection per thread, autocommit outside explicit transactions."""

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout  # seconds a write waits for another writer before "database is locked"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        migrate(db)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- jobs

    def create_job(self, project: str, location: str, spec: JobSpec, runs_root: Path,
                   max_pending: int | None = None) -> Job | None:
        """Store a new PENDING job; None (nothing stored) when `max_pending` jobs are pending already."""
        job_id, ts = new_id(), now()
        run_dir = str(runs_root / job_id)
        with self._tx() as db:
            if max_pending is not None:
                (pending,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (states.PENDING,)).fetchone()
                if pending >= max_pending:
                    return None
            db.execute("INSERT INTO jobs (id, project, location, state, detail_state, spec, create_time, update_time, run_dir)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (job_id, project, location, states.PENDING,
                                                              states.WAITING_FOR_QUOTA, json.dumps(spec.to_json()), ts, ts, run_dir))
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> Job | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, project: str, location: str, page_size: int, offset: int, state_in: set[str] | None = None
                  ) -> tuple[list[Job], int | None]:
        """Newest first. Returns the page and the next offset (None on the last page)."""
        sql, args = "SELECT * FROM jobs WHERE project = ? AND location = ?", [project, location]
        if state_in:
            sql += f" AND state IN ({','.join('?' * len(state_in))})"
            args += sorted(state_in)
        rows = self._db().execute(sql + " ORDER BY create_time DESC, id DESC LIMIT ? OFFSET ?",
                                  (*args, page_size + 1, offset)).fetchall()
        more = len(rows) > page_size
        return [_job(r) for r in rows[:page_size]], (offset + page_size if more else None)

    def jobs_after(self, limit: int, after: str | None = None) -> tuple[list[Job], bool]:
        """Every job (any project), newest first, starting after job `after`: a cursor page and whether more follow."""
        sql, args = "SELECT * FROM jobs", []
        if after is not None:
            sql += " WHERE (create_time, id) < (SELECT create_time, id FROM jobs WHERE id = ?)"
            args.append(after)
        rows = self._db().execute(sql + " ORDER BY create_time DESC, id DESC LIMIT ?", (*args, limit + 1)).fetchall()
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def jobs_in(self, *state_list: str) -> list[Job]:
        """Jobs in any of these states, oldest first (the worker's queue order)."""
        rows = self._db().execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(state_list))})"
                                  " ORDER BY create_time, id", state_list).fetchall()
        return [_job(r) for r in rows]

    def transition(self, job_id: str, target: str, *, detail: str | None = None, error: dict | None = None,
                   started: bool = False, ended: bool = False, attempt: bool = False, crash: bool = False,
                   model_id: str | None = None) -> Job:
        """Move a job to `target` if the table allows it; timestamps and fields change in the same transaction."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            states.check(row["state"], target)
            ts = now()
            sets, args = ["state = ?", "update_time = ?", "detail_state = ?"], [target, ts, detail]
            if error is not None:
                sets.append("error = ?")
                args.append(json.dumps(error))
            if started:
                sets.append("start_time = COALESCE(start_time, ?)")
                args.append(ts)
            if ended:
                sets.append("end_time = ?")
                args.append(ts)
            if attempt:
                sets.append("attempts = attempts + 1")
            if crash:
                sets.append("crashes = crashes + 1")
            if model_id is not None:
                sets.append("model_id = ?")
                args.append(model_id)
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
        return self.get_job(job_id)  # type: ignore[return-value]

    def request_cancel(self, job_id: str, error: dict) -> str:
        """Cancel whatever state the job is in right now, in one transaction (the worker may be moving it from
        PENDING to RUNNING at the same moment): PENDING -> CANCELLED, RUNNING -> CANCELLING, CANCELLING stays.
        Returns the state found; an ended job is left as it is. KeyError if there is no such job."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            found, ts = row["state"], now()
            if found in (states.PENDING, states.PAUSED):
                db.execute("UPDATE jobs SET state = ?, detail_state = NULL, error = ?, update_time = ?, end_time = ?"
                           " WHERE id = ?", (states.CANCELLED, json.dumps(error), ts, ts, job_id))
            elif found in (states.RUNNING, states.PAUSING):
                db.execute("UPDATE jobs SET state = ?, detail_state = NULL, update_time = ? WHERE id = ?",
                           (states.CANCELLING, ts, job_id))
        return found

    def request_pause(self, job_id: str) -> str:
        """Pause whatever state the job is in right now, in one transaction: PENDING -> PAUSED, RUNNING -> PAUSING
        (the worker stops its process, which saves its state first). Returns the state found; others are left."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            found, ts = row["state"], now()
            target = {states.PENDING: states.PAUSED, states.RUNNING: states.PAUSING}.get(found)
            if target:
                db.execute("UPDATE jobs SET state = ?, detail_state = NULL, update_time = ? WHERE id = ?",
                           (target, ts, job_id))
        return found

    def update_progress(self, job_id: str, *, detail: str | None = None, stats: dict | None = None,
                        metadata: dict | None = None) -> None:
        """Progress of a running job (no state change)."""
        sets, args = ["update_time = ?"], [now()]
        for col, value in (("detail_state", detail), ("stats", stats), ("metadata", metadata)):
            if value is not None:
                sets.append(f"{col} = ?")
                args.append(value if col == "detail_state" else json.dumps(value))
        self._db().execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ?",
                           (*args, job_id, states.RUNNING))

    # ---------------------------------------------------------------- tuned models and endpoints

    def finish_job(self, job: Job, base_model: str, adapter_dir: str, checkpoints: list[dict],
                   metadata: dict) -> tuple[Job, Model]:
        """RUNNING -> SUCCEEDED and register the tuned model with one endpoint per checkpoint, atomically."""
        model_id, ts = new_id(), now()
        spec = job.spec
        with self._tx() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()["state"]
            states.check(state, states.SUCCEEDED)
            db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (model_id, job.project, job.location, job.id, spec.display_name, spec.description, base_model,
                        adapter_dir, json.dumps(checkpoints), json.dumps(spec.labels), ts, ts))
            for checkpoint_id in [None] + [c["checkpointId"] for c in checkpoints]:
                db.execute("INSERT INTO endpoints (id, project, location, model_id, checkpoint_id, create_time)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (new_id(), job.project, job.location, model_id, checkpoint_id, ts))
            db.execute("UPDATE jobs SET state = ?, detail_state = NULL, update_time = ?, end_time = ?, model_id = ?,"
                       " metadata = ? WHERE id = ?", (states.SUCCEEDED, ts, ts, model_id, json.dumps(metadata), job.id))
        return self.get_job(job.id), self.get_model(model_id)  # type: ignore[return-value]

    def get_model(self, model_id: str) -> Model | None:
        row = self._db().execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        return _model(row) if row else None

    def list_models(self, project: str, location: str, page_size: int, offset: int) -> tuple[list[Model], int | None]:
        rows = self._db().execute("SELECT * FROM models WHERE project = ? AND location = ? ORDER BY create_time DESC, id DESC"
                                  " LIMIT ? OFFSET ?", (project, location, page_size + 1, offset)).fetchall()
        more = len(rows) > page_size
        return [_model(r) for r in rows[:page_size]], (offset + page_size if more else None)

    def all_models(self) -> list[Model]:
        """Every tuned model (any project), newest first."""
        rows = self._db().execute("SELECT * FROM models ORDER BY create_time DESC, id DESC").fetchall()
        return [_model(r) for r in rows]

    def delete_model(self, model_id: str) -> Model | None:
        """Remove a tuned model and its endpoints (rows only; the caller removes files)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return _model(row)

    def endpoints_of(self, model_id: str) -> list[Endpoint]:
        rows = self._db().execute("SELECT * FROM endpoints WHERE model_id = ? ORDER BY checkpoint_id IS NOT NULL,"
                                  " CAST(checkpoint_id AS INTEGER)", (model_id,)).fetchall()
        return [Endpoint(**dict(r)) for r in rows]

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._db().execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return Endpoint(**dict(row)) if row else None

    def list_endpoints(self, project: str, location: str, page_size: int, offset: int
                       ) -> tuple[list[Endpoint], int | None]:
        rows = self._db().execute("SELECT * FROM endpoints WHERE project = ? AND location = ? ORDER BY create_time DESC,"
                                  " id DESC LIMIT ? OFFSET ?", (project, location, page_size + 1, offset)).fetchall()
        more = len(rows) > page_size
        return [Endpoint(**dict(r)) for r in rows[:page_size]], (offset + page_size if more else None)

    def undeploy_endpoint(self, endpoint_id: str) -> None:
        self._db().execute("UPDATE endpoints SET deployed = 0 WHERE id = ?", (endpoint_id,))

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._db().execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))

    def delete_experiment(self, job_id: str, level: int) -> None:
        """Mark a job's experiment run context (RUN_CONTEXT_DELETED) or whole experiment (EXPERIMENT_DELETED) deleted."""
        self._db().execute("UPDATE jobs SET experiment_deleted = MAX(experiment_deleted, ?) WHERE id = ?", (level, job_id))

    def jobs_with_experiments(self, project: str, location: str) -> list[Job]:
        """Jobs whose Experiment context exists: started, and not deleted. Newest first."""
        rows = self._db().execute("SELECT * FROM jobs WHERE project = ? AND location = ? AND start_time IS NOT NULL"
                                  " AND experiment_deleted < ? ORDER BY create_time DESC, id DESC",
                                  (project, location, EXPERIMENT_DELETED)).fetchall()
        return [_job(r) for r in rows]

    # ---------------------------------------------------------------- long-running operations

    def add_operation(self, name: str, body: dict) -> None:
        self._db().execute("INSERT INTO operations VALUES (?, ?, ?)", (name, json.dumps(body), now()))

    def get_operation(self, name: str) -> dict | None:
        row = self._db().execute("SELECT body FROM operations WHERE name = ?", (name,)).fetchone()
        return json.loads(row["body"]) if row else None

    # ---------------------------------------------------------------- files (OpenAI-compatible API)

    def add_file(self, file: File) -> File:
        self._db().execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                           (file.id, file.filename, file.purpose, file.bytes, file.created_at, file.path))
        return file

    def get_file(self, file_id: str) -> File | None:
        row = self._db().execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return File(**dict(row)) if row else None

    def files_after(self, limit: int, after: str | None, newest_first: bool, purpose: str | None
                    ) -> tuple[list[File], bool]:
        """A cursor page of files in created_at order, starting after file `after`; and whether more follow."""
        op, order = ("<", "DESC") if newest_first else (">", "ASC")
        where, args = [], []
        if after is not None:
            where.append(f"(created_at, id) {op} (SELECT created_at, id FROM files WHERE id = ?)")
            args.append(after)
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        sql = "SELECT * FROM files" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db().execute(f"{sql} ORDER BY created_at {order}, id {order} LIMIT ?", (*args, limit + 1)).fetchall()
        return [File(**dict(r)) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> None:
        self._db().execute("DELETE FROM files WHERE id = ?", (file_id,))
