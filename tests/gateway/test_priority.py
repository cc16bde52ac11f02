"""Priority at the gateway (docs/API.md "Priority"): every task-creating action reads the extension field
``Priority`` (a whole number 0..9, default 5), lowers it to the key's cap (its key entry's MaxPriority, else
ATELIER_MAX_PRIORITY) with a Note, keeps it with the task (the recovery sends a lost job again at it:
tests/gateway/test_actions.py), and queues the job in kombu's list of that priority, the
one a worker pops before the lower ones'. That a worker does run them in that order: tests/e2e/test_priority.py."""
from __future__ import annotations

import orjson
import pytest
import redis

from app.contract.jobs import ACTION_SPECS
from app.contract.limits import DEFAULT_PRIORITY, MAX_PRIORITY_FIELD, PRIORITY_FIELD, PRIORITY_RANGE
from app.contract.queue import PRIORITY_STEPS, broker_priority, queue_lists
from app.keys import KeyFileError, KeyPair, KeyStore
from app.services import get_services
from support.api import KEYS, PUB, TASK_BODIES, signed

TASK_ACTIONS = [name for name, spec in ACTION_SPECS.items() if spec.creates_task]


def _where_queued(r: redis.Redis, queue: str, uid: str) -> tuple[int, int]:
    """(the index of the priority list that holds the task's job message, the message's kombu priority)."""
    for step, name in enumerate(queue_lists(queue)):
        for raw in r.lrange(name, 0, -1):
            message = orjson.loads(raw)
            if uid in message["headers"]["argsrepr"]:
                return step, message["properties"]["priority"]
    raise AssertionError(f"no job message of {uid} in {queue}")


def _record(r: redis.Redis, uid: str) -> dict:
    return get_services().tasks.get(uid)


def test_one_list_per_priority_the_highest_popped_first():
    assert len(PRIORITY_STEPS) == PRIORITY_RANGE.hi - PRIORITY_RANGE.lo + 1
    assert [broker_priority(p) for p in (9, 5, 0)] == [0, 4, 9]
    lists = queue_lists("q")
    assert lists[0] == "q" and len(set(lists)) == len(lists) and all(n.startswith("q") for n in lists)


@pytest.mark.parametrize("action", TASK_ACTIONS)
def test_every_task_creating_action_queues_at_its_priority(api, atelier_env, action):
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    for priority in (None, 0, 9):
        body = TASK_BODIES[action]()
        if priority is not None:
            body[PRIORITY_FIELD] = priority
        out = api(signed(body))
        assert out["RetCode"] == 0, out
        want = DEFAULT_PRIORITY if priority is None else priority
        assert _where_queued(r, api.queue, out["TaskUID"]) == (broker_priority(want), broker_priority(want))
        rec = _record(r, out["TaskUID"])
        assert rec.priority == want and not any(PRIORITY_FIELD in n for n in rec.notes)


@pytest.mark.parametrize("action", TASK_ACTIONS)
@pytest.mark.parametrize(("value", "rule"), [
    (10, "must be between 0 and 9"), (-1, "must be between 0 and 9"), ("9", "must be an integer"),
    (2.5, "must be an integer"), (True, "must be an integer"),
])
def test_a_priority_out_of_range_or_not_a_whole_number_is_230_naming_it(api, action, value, rule):
    out = api(signed({**TASK_BODIES[action](), PRIORITY_FIELD: value}))
    assert out["RetCode"] == 230, out
    assert out["Message"].startswith(f"Params [{PRIORITY_FIELD}] not available: "), out
    assert rule in out["Message"]


def test_a_whole_float_is_the_integer(api, atelier_env):
    out = api(signed({**TASK_BODIES["ResizeImage"](), PRIORITY_FIELD: 7.0}))
    assert _record(None, out["TaskUID"]).priority == 7


def test_a_priority_above_the_key_s_max_priority_is_lowered_to_it_with_a_note(api, atelier_env, monkeypatch):
    svc = get_services()
    alice, bob = PUB["pk-alice"], PUB["pk-bob"]
    monkeypatch.setattr(svc, "keys", KeyStore([KeyPair(alice, KEYS["pk-alice"], max_priority=3),
                                               KeyPair(bob, KEYS["pk-bob"])]))
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    capped = api(signed({**TASK_BODIES["ResizeImage"](), PRIORITY_FIELD: 8}))
    rec = _record(r, capped["TaskUID"])
    assert rec.priority == 3 and _where_queued(r, api.queue, capped["TaskUID"])[0] == broker_priority(3)
    assert f"{PRIORITY_FIELD} 8 lowered to 3, the most this PublicKey may ask for ({MAX_PRIORITY_FIELD})" in rec.notes
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [capped["TaskUID"]]}))["TaskDetailList"][0]
    assert any("lowered to 3" in n for n in detail["Notes"]), detail
    under = api(signed({**TASK_BODIES["ResizeImage"](), PRIORITY_FIELD: 2}))
    assert _record(r, under["TaskUID"]).priority == 2
    other = api(signed({**TASK_BODIES["ResizeImage"](), PRIORITY_FIELD: 8}, "pk-bob"))  # the setting's 9
    assert _record(r, other["TaskUID"]).priority == 8


def test_the_setting_caps_a_key_without_max_priority(api, atelier_env, monkeypatch):
    svc = get_services()
    monkeypatch.setattr(svc.settings, "max_priority", 4)
    out = api(signed({**TASK_BODIES["GenerateFromMannequin"](), PRIORITY_FIELD: 9}))
    assert _record(None, out["TaskUID"]).priority == 4


def _keys(tmp_path, extra: str) -> KeyStore:
    path = tmp_path / "keys.yaml"
    path.write_text(f'keys:\n  - PublicKey: shop\n    PrivateKey: "s3cret"\n{extra}')
    return KeyStore.from_file(path)


def test_a_key_entry_s_max_priority_is_read(tmp_path):
    assert _keys(tmp_path, "    MaxPriority: 2\n").pair("shop").max_priority == 2
    assert _keys(tmp_path, "").pair("shop").max_priority is None


@pytest.mark.parametrize("value", ["10", "-1", "high", "2.5", "true"])
def test_a_max_priority_that_is_not_a_whole_number_in_range_is_refused(tmp_path, value):
    with pytest.raises(KeyFileError, match=r"keys\[0\] \(PublicKey shop\): MaxPriority must be a whole number"
                                           r" between 0 and 9"):
        _keys(tmp_path, f"    MaxPriority: {value}\n")
