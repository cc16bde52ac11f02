"""A task's notes (TaskDetail's) and its creation time as the worker reads them between two jobs: one Redis step
each, without reading the whole record (``TaskStore.add_note``, ``TaskStore.created_at``), against the real test
Redis."""
from __future__ import annotations

import time

import pytest
import redis

from app.contract.taskstore import TaskStore, new_task_uid, task_key


@pytest.fixture()
def store(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield TaskStore(client, 600)
    client.close()


def _task(store: TaskStore, notes=()) -> str:
    uid = new_task_uid()
    assert store.create("pk-notes", None, "GenerateFromMannequin", 7, 0, uid=uid, notes=list(notes))[1]
    return uid


def test_notes_are_added_once_in_order_whatever_they_hold(store):
    uid = _task(store, ["created with a note"])
    tricky = ['drawn at 512x768', 'quotes "inside", a comma, ] and [', "non-ASCII: 256\u00d7256, \u00e9t\u00e9 \u2713",
              "a backslash \\ and a slash /", 'quotes "inside"']
    for note in tricky + tricky:
        store.add_note(uid, note)
    assert store.get(uid).notes == ["created with a note", *tricky]


def test_a_note_that_is_part_of_another_is_still_added(store):
    uid = _task(store, ['quotes "inside", a comma'])
    store.add_note(uid, "inside")
    store.add_note(uid, "quotes ")
    store.add_note(uid, "a comma")
    assert store.get(uid).notes == ['quotes "inside", a comma', "inside", "quotes ", "a comma"]


def test_the_first_note_of_a_task_without_any_and_a_gone_task(store):
    uid = _task(store)
    store.add_note(uid, "first")
    assert store.get(uid).notes == ["first"]
    store.r.hdel(task_key(uid), "notes")  # a record written before notes existed
    store.add_note(uid, "again")
    assert store.get(uid).notes == ["again"]
    gone = new_task_uid()
    store.add_note(gone, "nothing")
    assert not store.r.exists(task_key(gone))


def test_created_at_reads_the_one_field(store):
    before = time.time()
    uid = _task(store)
    assert before <= store.created_at(uid) <= time.time()
    assert store.created_at(uid) == store.get(uid).created_at
    assert store.created_at(new_task_uid()) is None
