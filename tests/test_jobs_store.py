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
