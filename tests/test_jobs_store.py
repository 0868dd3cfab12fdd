"""Job states and the SQLite store: only legal moves, atomic under concurrency, durable across reopen."""

from __future__ import annotations

import threading

import pytest

from tunery.jobs import states
from tests.helpers import job_spec
from tunery.jobs.migrations import MIGRATIONS
from tunery.jobs.states import IllegalTransition
from tunery.jobs.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "tunery.db")


def test_the_transition_table_allows_the_vertex_lifecycle_only():
    states.check(states.PENDING, states.RUNNING)
    states.check(states.RUNNING, states.SUCCEEDED)
    states.check(states.RUNNING, states.CANCELLING)
    states.check(states.CANCELLING, states.CANCELLED)
    for a, b in [(states.SUCCEEDED, states.RUNNING), (states.CANCELLED, states.PENDING), (states.PENDING, states.SUCCEEDED),
                 (states.FAILED, states.CANCELLING), (states.RUNNING, states.RUNNING)]:
        with pytest.raises(IllegalTransition, match=f"{a} cannot move to {b}"):
            states.check(a, b)


def test_create_get_and_timestamps(store, tmp_path):
    job = store.create_job("p", "us-central1", job_spec(), tmp_path / "runs")
    assert job.state == states.PENDING and job.detail_state == states.WAITING_FOR_QUOTA
    assert job.name == f"projects/p/locations/us-central1/tuningJobs/{job.id}" and len(job.id) == 19 and job.id.isdigit()
    assert job.create_time.endswith("Z") and job.start_time is None
    running = store.transition(job.id, states.RUNNING, detail=states.PROCESSING_DATASET, started=True, attempt=True)
    assert running.start_time is not None and running.attempts == 1
    with pytest.raises(IllegalTransition):
        store.transition(job.id, states.RUNNING)
    assert store.get_job(job.id).state == states.RUNNING  # the refused move changed nothing


def test_exactly_one_of_many_concurrent_claims_wins(store, tmp_path):
    job = store.create_job("p", "l", job_spec(), tmp_path)
    wins, losses = [], []

    def claim():
        try:
            store.transition(job.id, states.RUNNING)
            wins.append(1)
        except IllegalTransition:
            losses.append(1)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7


def test_list_pages_newest_first_and_filters_by_state(store, tmp_path):
    ids = [store.create_job("p", "l", job_spec(f"d{i}"), tmp_path).id for i in range(5)]
    store.create_job("other", "l", job_spec(), tmp_path)
    store.transition(ids[0], states.CANCELLED)
    page, nxt = store.list_jobs("p", "l", 2, 0)
    assert [j.id for j in page] == ids[::-1][:2] and nxt == 2
    page, nxt = store.list_jobs("p", "l", 2, 4)
    assert [j.id for j in page] == [ids[0]] and nxt is None
    pending, _ = store.list_jobs("p", "l", 10, 0, {states.PENDING})
    assert len(pending) == 4 and ids[0] not in {j.id for j in pending}


def test_finished_job_registers_model_and_endpoints_and_delete_cascades(store, tmp_path):
    job = store.create_job("p", "l", job_spec(display_name="alerts", labels={"team": "sre"}), tmp_path)
    job = store.transition(job.id, states.RUNNING, started=True)
    ckpts = [{"checkpointId": "1", "epoch": 1, "step": 5, "path": "/x/1"}, {"checkpointId": "2", "epoch": 2, "step": 10, "path": "/x/2"}]
    job, model = store.finish_job(job, "smollm2-135m-instruct", "/x/adapter", ckpts, {"completedEpochCount": 2})
    assert job.state == states.SUCCEEDED and job.model_id == model.id and job.end_time and job.metadata["completedEpochCount"] == 2
    assert model.display_name == "alerts" and model.labels == {"team": "sre"}
    endpoints = store.endpoints_of(model.id)
    assert [e.checkpoint_id for e in endpoints] == [None, "1", "2"]
    assert store.get_endpoint(endpoints[0].id).model_id == model.id
    assert store.delete_model(model.id).id == model.id
    assert store.get_model(model.id) is None and store.endpoints_of(model.id) == [] and store.get_endpoint(endpoints[1].id) is None
    assert store.delete_model(model.id) is None


def test_reopening_keeps_everything_and_does_not_remigrate(tmp_path):
    first = Store(tmp_path / "tunery.db")
    job = first.create_job("p", "l", job_spec("data.jsonl", epochs=3), tmp_path)
    again = Store(tmp_path / "tunery.db")
    assert again.get_job(job.id).spec == job_spec("data.jsonl", epochs=3)
    assert again._db().execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert again._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_stored_as_request_bodies_migrate_to_typed_specs(tmp_path):
    """A tunery.db from before m005 (each job the client's body with the server's fields beside it, including
    values a client could plant before create refused them) opens with every job as a JobSpec, lists still work."""
    import json
    import sqlite3

    from tunery.jobs import migrations

    db = sqlite3.connect(tmp_path / "tunery.db", isolation_level=None)
    for number, fn in enumerate(migrations.MIGRATIONS[:4], start=1):
        fn(db)
        db.execute(f"PRAGMA user_version = {number}")
    old = {"baseModel": "smollm2-135m-instruct", "requestedBaseModel": "gemini-2.0-flash-001",
           "tunedModelDisplayName": "alerts", "labels": {"team": "sre"},
           "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/t.jsonl", "hyperParameters": {"epochCount": 3}},
           "_config": {"train": "gs://b/t.jsonl", "epochs": 3, "adapter_size": 8, "lora_alpha": 16.0,
                       "base_model": "smollm2-135m-instruct"},
           "_evaluation": {"dataset": "/data/v.jsonl", "task": "qa", "limit": 5, "max_output_tokens": 8,
                           "temperature": 0.0}, "_workers": 2,
           "_openai": {"training_file": "file-1", "validation_file": None, "suffix": "s", "seed": 7, "metadata": None}}
    planted = {"baseModel": "smollm2-135m-instruct", "requestedBaseModel": ["a list"], "_openai": "not an object",
               "_workers": "64", "supervisedTuningSpec": {"trainingDatasetUri": "t.jsonl"}, "_config": {"train": "t.jsonl"}}
    for job_id, body in (("1", old), ("2", planted)):
        db.execute("INSERT INTO jobs (id, project, location, state, request, create_time, update_time, run_dir) VALUES"
                   " (?, 'p', 'l', 'JOB_STATE_PENDING', ?, '2026-01-01T00:00:0" + job_id + ".000000Z', 't', 'r')",
                   (job_id, json.dumps(body)))
    db.close()
    store = Store(tmp_path / "tunery.db")
    first, second = store.get_job("1").spec, store.get_job("2").spec
    assert (first.door, first.base_model, first.requested_base_model, first.display_name, first.labels) == (
        "openai", "smollm2-135m-instruct", "gemini-2.0-flash-001", "alerts", {"team": "sre"})
    assert (first.tuning.train, first.tuning.epochs, first.tuning.adapter_size, first.tuning.lora_alpha) == (
        "gs://b/t.jsonl", 3, 8, 16.0)
    assert first.explicit == ("epochs",) and first.workers == 2 and first.train_uri == "gs://b/t.jsonl"
    assert first.evaluation.dataset == "/data/v.jsonl" and first.evaluation.limit == 5
    assert first.openai.training_file == "file-1" and first.openai.seed == 7
    assert (second.door, second.requested_base_model, second.openai, second.workers) == ("vertex", None, None, 1)
    assert [j.id for j in store.list_jobs("p", "l", 10, 0)[0]] == ["2", "1"]
    assert "request" not in {r[1] for r in store._db().execute("PRAGMA table_info(jobs)")}
