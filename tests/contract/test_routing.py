"""Model-aware routing (app/contract/routing.py): which worker a job goes to (the pure :func:`choose`), and what the
gateway and the workers keep in Redis for it, against the real test Redis: the live workers as the workers announce
them (``workers.metrics.announce_alive``), the direct queues as kombu names their priority lists, the hand-back of a
stopping worker's queue and the reclaim of a dead one's. Real workers routed to: tests/e2e/test_routing.py."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import redis
from celery import Celery

from app.contract.queue import PRIORITY_STEPS, broker_priority, queue_lists
from app.contract.routing import (
    FORGET_AFTER_S,
    LOCK_WAIT_S,
    WorkerView,
    advertise,
    choose,
    direct_key,
    direct_queue,
    group,
    hand_back,
    lock_key,
    reclaim,
    route,
    routing_headers,
    routing_lock,
    worker_views,
)
from workers.metrics import announce_alive, withdraw

W = WorkerView


def test_a_job_goes_to_the_worker_that_holds_its_model():
    workers = [W("a", frozenset({"m1"}), 3), W("b", frozenset({"m2"}), 0)]
    assert choose("m1", workers, backlog=32, switch_jobs=4) == "a"
    assert choose("m2", workers, backlog=32, switch_jobs=4) == "b"


def test_to_a_cold_worker_only_when_the_warm_ones_are_switch_jobs_busier():
    cold = W("cold", frozenset(), 0)
    assert choose("m", [W("warm", frozenset({"m"}), 3), cold], backlog=32, switch_jobs=4) == "warm"
    assert choose("m", [W("warm", frozenset({"m"}), 4), cold], backlog=32, switch_jobs=4) == "warm"  # a tie: no load
    assert choose("m", [W("warm", frozenset({"m"}), 5), cold], backlog=32, switch_jobs=4) == "cold"


def test_a_spill_between_the_jobs_of_another_model_costs_two_switches():
    """A worker with jobs of its own model waiting runs the spilled job between them: a load there and one back."""
    warm = W("warm", frozenset({"m"}), 8)
    assert choose("m", [warm, W("busy-other", frozenset({"o"}), 1)], backlog=32, switch_jobs=4) == "warm"  # 1+8 > 8
    assert choose("m", [warm, W("idle-other", frozenset({"o"}), 0)], backlog=32, switch_jobs=4) == "idle-other"
    assert choose("m", [W("warm", frozenset({"m"}), 10), W("busy-other", frozenset({"o"}), 1)], backlog=32,
                  switch_jobs=4) == "busy-other"  # 10 > 1 + 8


def test_a_model_held_nowhere_goes_to_the_least_busy_worker_preferring_one_that_holds_less():
    workers = [W("a", frozenset({"x"}), 1), W("b", frozenset(), 1), W("c", frozenset({"y", "z"}), 0)]
    assert choose("new", workers, backlog=32, switch_jobs=4) == "c"
    assert choose("new", workers[:2], backlog=32, switch_jobs=4) == "b"


def test_the_shared_queue_over_the_backlog_for_no_model_or_no_worker():
    busy = [W("a", frozenset({"m"}), 32), W("b", frozenset(), 40)]
    assert choose("m", busy, backlog=32, switch_jobs=4) is None
    assert choose("m", [W("a", frozenset({"m"}), 31)], backlog=32, switch_jobs=4) == "a"
    assert choose(None, [W("a", frozenset(), 0)], backlog=32, switch_jobs=4) is None
    assert choose("m", [], backlog=32, switch_jobs=4) is None
    assert choose("m", [W("a", frozenset({"m"}), 0)], backlog=0, switch_jobs=4) is None  # routing off


def _steps(**at: int) -> tuple[int, ...]:
    """Jobs waiting by kombu step from wire Priorities: _steps(p1=20) is 20 jobs at Priority 1."""
    out = [0] * 10
    for name, n in at.items():
        out[broker_priority(int(name[1:]))] = n
    return tuple(out)


def test_only_the_jobs_of_its_priority_or_above_delay_a_job():
    """A catalogue batch at Priority 1 waiting in the holder's queue does not send a default job to a cold worker:
    it runs before the batch."""
    holder = W("holder", frozenset({"m"}), 20, _steps(p1=20))
    cold = W("cold", frozenset(), 0, _steps())
    assert holder.ahead(broker_priority(5)) == 0 and holder.ahead(broker_priority(1)) == 20
    assert choose("m", [holder, cold], backlog=32, switch_jobs=4) == "holder"
    assert choose("m", [holder, cold], backlog=32, switch_jobs=4, priority=1) == "cold"  # behind 20 of its own
    busy = W("holder", frozenset({"m"}), 20, _steps(p5=10, p1=10))
    assert choose("m", [busy, cold], backlog=32, switch_jobs=4) == "cold"  # 10 ahead > 0 + one switch


def test_an_interactive_job_whose_model_is_held_nowhere_goes_to_the_first_free_worker():
    """Above the default Priority a job needs a load wherever it goes: the shared queue, where the first worker to
    free takes it before every lower Priority; one whose model a worker holds waits for that worker."""
    workers = [W("a", frozenset({"m1"}), 8, _steps(p1=8)), W("b", frozenset({"m2"}), 8, _steps(p1=8))]
    assert choose("new", workers, backlog=32, switch_jobs=4, priority=9) is None
    assert choose("m2", workers, backlog=32, switch_jobs=4, priority=9) == "b"
    assert choose("new", workers, backlog=32, switch_jobs=4, priority=5) == "a"  # a burst's first job: routed


# --- in Redis ------------------------------------------------------------------------------------------------


@pytest.fixture()
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture()
def queue(r):
    name = f"atelier-routing-{uuid.uuid4().hex[:8]}"
    yield name
    workers = r.smembers(direct_key(name))
    keys = [*queue_lists(name), direct_key(name), f"atelier:workers:{name}", lock_key(name)]
    for w in workers:
        keys += [*queue_lists(direct_queue(name, w)), f"atelier:warm:{w}", f"atelier:routed:{w}", f"atelier:gone:{w}"]
    r.delete(*keys)


def _worker(r, queue: str, models=(), ttl_s: float = 15) -> str:
    """A live worker of ``queue`` as a worker announces itself (its heartbeat), holding ``models``."""
    w = f"host:{uuid.uuid4().hex[:6]}"
    announce_alive(r, w, [queue], ttl_s)
    advertise(r, queue, w, models, ttl_s)
    return w


def _send(r, queue: str, model: str | None, priority_step: int = 4, **kw) -> str:
    """Route a job as the gateway does and put a marker message in the list kombu would."""
    target = route(r, queue, model, backlog=kw.get("backlog", 32), switch_jobs=kw.get("switch_jobs", 4))
    r.lpush(queue_lists(target)[priority_step], f"{model}-{uuid.uuid4().hex[:6]}")
    return target


def test_a_burst_of_two_models_on_two_cold_workers_splits_by_model(r, queue):
    a, b = _worker(r, queue), _worker(r, queue)
    sent = [(m, _send(r, queue, m)) for m in ["m1", "m2"] * 10]
    by_model = {m: {t for mm, t in sent if mm == m} for m in ("m1", "m2")}
    assert all(len(targets) == 1 for targets in by_model.values()), by_model
    assert {t for ts in by_model.values() for t in ts} == {direct_queue(queue, a), direct_queue(queue, b)}
    views = {v.worker_id: v for v in worker_views(r, queue)}
    assert views[a].backlog == views[b].backlog == 10


def test_a_burst_sent_by_concurrent_clients_still_splits_by_model(r, queue, redis_url):
    """Eight clients at once, each with its own connection as gateways have: the lock makes each choice see the
    ones before it. Without it, the first jobs all saw both models held nowhere and went to both workers (measured:
    9 loads instead of 2 in the routing bench on an idle machine)."""
    a, b = _worker(r, queue), _worker(r, queue)
    clients = [redis.Redis.from_url(redis_url, decode_responses=True) for _ in range(8)]
    start = threading.Barrier(8)

    def send(i: int) -> tuple[str, str]:
        c, model = clients[i % 8], ("m1", "m2")[(i * 7 // 3) % 2]  # an irregular mix of the two
        if i < 8:
            start.wait(10)  # the first eight at once
        with routing_lock(c, queue) as held:
            assert held
            return model, _send(c, queue, model)

    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(send, range(40)))
    for c in clients:
        c.close()
    by_model = {m: {t for mm, t in sent if mm == m} for m in ("m1", "m2")}
    assert by_model["m1"] | by_model["m2"] == {direct_queue(queue, a), direct_queue(queue, b)}
    assert all(len(targets) == 1 for targets in by_model.values()), by_model
    assert not r.exists(lock_key(queue))


def test_the_lock_is_waited_for_a_bounded_time_and_taken_only_for_routed_jobs(r, queue):
    other = r.lock(lock_key(queue), timeout=30)
    assert other.acquire()
    try:
        t0 = time.monotonic()
        with routing_lock(r, queue) as held:
            assert not held  # a gateway stuck holding it does not stop the others' submissions
        assert 0.9 * LOCK_WAIT_S <= time.monotonic() - t0 < LOCK_WAIT_S + 2  # it waited, then went on
        with routing_lock(r, queue, active=False) as held:
            assert not held
    finally:
        other.release()
    with routing_lock(r, queue) as held:
        assert held and r.exists(lock_key(queue))
        with routing_lock(r, queue, active=False) as inner:  # a job routed nowhere does not wait
            assert not inner
    assert not r.exists(lock_key(queue))


def test_a_spilled_job_does_not_make_its_model_count_as_held_there(r, queue):
    """A burst whose order runs ahead on one model spills a job of it to the other worker; that worker is not taken
    for a holder of the model then, so the model's next jobs still go to the worker that holds it (else both
    workers would take both models' jobs and switch back and forth)."""
    workers = [_worker(r, queue), _worker(r, queue)]
    first = _send(r, queue, "m1")
    a = next(w for w in workers if first == direct_queue(queue, w))  # the tie: by worker id
    b = next(w for w in workers if w != a)
    assert _send(r, queue, "m2") == direct_queue(queue, b)
    sent = [_send(r, queue, "m1") for _ in range(10)]  # a's backlog grows: 11 against b's 1 + 2 switches
    assert direct_queue(queue, b) in sent, "the burst should spill to the other worker once a is busy enough"
    spilled = sent.index(direct_queue(queue, b))
    assert r.smembers(f"atelier:routed:{b}") == {"m2"}
    for _ in range(3):  # a runs 3 jobs; b has m2 then the spilled m1 waiting: m1 is still a's model
        r.rpop(queue_lists(direct_queue(queue, a))[4])
    assert _send(r, queue, "m1") == direct_queue(queue, a), sent[spilled:]


def test_a_job_spilled_to_a_worker_holding_nothing_makes_it_take_the_model_up(r, queue):
    """One model's burst on two workers: once the first is busy enough, the one that holds no model takes the model up
    (both hold it then, and share the rest of the burst)."""
    _worker(r, queue, ["m1"])
    b = _worker(r, queue)
    sent = [_send(r, queue, "m1") for _ in range(12)]
    first = sent.index(direct_queue(queue, b))
    assert first == 5  # a's backlog 5 > b's 0 + one switch
    assert r.smembers(f"atelier:routed:{b}") == {"m1"}
    backlogs = sorted(v.backlog for v in worker_views(r, queue))
    assert backlogs == [6, 6], sent


def test_a_job_needing_no_model_and_a_queue_without_live_workers_go_to_the_shared_queue(r, queue):
    assert _send(r, queue, None) == queue
    assert _send(r, queue, "m1") == queue  # nobody consumes a direct queue yet
    w = _worker(r, queue, ["m1"])
    assert _send(r, queue, "m1") == direct_queue(queue, w)
    withdraw(r, w, [queue])  # it stopped: no longer alive, no longer routed to
    assert _send(r, queue, "m1") == queue


def test_over_the_backlog_the_shared_queue(r, queue):
    w = _worker(r, queue, ["m1"])
    assert [_send(r, queue, "m1", backlog=3) for _ in range(5)] == [direct_queue(queue, w)] * 3 + [queue] * 2


def test_hand_back_keeps_the_order_and_the_priorities_ahead_of_the_shared_queue(r, queue):
    w = _worker(r, queue, ["m1"])
    mine, shared = queue_lists(direct_queue(queue, w)), queue_lists(queue)
    r.lpush(shared[4], "already-shared")
    for name in ("j1", "j2", "j3"):
        r.lpush(mine[4], name)
    r.lpush(mine[0], "urgent")
    assert hand_back(r, queue, w) == 4
    assert all(r.llen(n) == 0 for n in mine)
    assert r.lrange(shared[0], 0, -1) == ["urgent"]
    # kombu pops from the right: the oldest handed-back job first, then the others in order, then the shared one
    assert [r.rpop(shared[4]) for _ in range(4)] == ["j1", "j2", "j3", "already-shared"]


def test_reclaim_moves_a_dead_worker_s_jobs_and_forgets_it_later(r, queue):
    dead = _worker(r, queue, ["m1"], ttl_s=0.2)
    live = _worker(r, queue, ["m2"])
    r.lpush(queue_lists(direct_queue(queue, dead))[4], "stranded")
    r.lpush(queue_lists(direct_queue(queue, live))[4], "waiting")
    time.sleep(0.3)
    assert reclaim(r, queue, now=1000.0) == {dead: 1}
    assert r.lrange(queue_lists(queue)[4], 0, -1) == ["stranded"]
    assert r.lrange(queue_lists(direct_queue(queue, live))[4], 0, -1) == ["waiting"]
    # a job a gateway sent it just before it was found gone is moved by the next reclaim
    r.lpush(queue_lists(direct_queue(queue, dead))[4], "late")
    assert reclaim(r, queue, now=1000.0 + FORGET_AFTER_S) == {dead: 1}
    assert dead in r.smembers(direct_key(queue))
    assert reclaim(r, queue, now=1000.0 + FORGET_AFTER_S + 1) == {dead: 0}
    assert r.smembers(direct_key(queue)) == {live}
    assert [v.worker_id for v in worker_views(r, queue)] == [live]


# --- grouping a worker's queue by model --------------------------------------------------------------------------


@pytest.fixture()
def sender(redis_url):
    """Sends job messages as the gateway does (a Celery app with the service's priority lists)."""
    app = Celery("routing-test", broker=redis_url)
    app.conf.broker_transport_options = {"priority_steps": list(PRIORITY_STEPS), "queue_order_strategy": "priority"}
    yield app
    app.close()


def _routed(r, sender, queue: str, model: str, *, priority: int = 5, sent_at: float | None = None,
            max_wait_s: float = 30) -> tuple[str, int]:
    """Send a routed job of ``model`` to ``queue`` and group it as the gateway does; its task id and the jobs it
    passed."""
    task = sender.send_task("atelier.test", args=[{"model": model}], queue=queue, priority=broker_priority(priority),
                            headers=routing_headers(model, sent_at))
    passed = group(r, queue_lists(queue)[broker_priority(priority)], task.id, model, max_wait_s=max_wait_s, look=32)
    return task.id, passed


def _run_order(r, queue: str) -> list[str]:
    """The models of the waiting jobs in the order a worker pops them (highest Priority first, oldest first)."""
    out = []
    for name in queue_lists(queue):
        out += [orjson.loads(m)["headers"]["atelier_model"] for m in reversed(r.lrange(name, 0, -1))]
    return out


def test_a_worker_s_waiting_jobs_are_grouped_by_model(r, queue, sender):
    w = direct_queue(queue, "host:1")
    passed = [_routed(r, sender, w, m)[1] for m in "acacaacc"]
    assert _run_order(r, w) == list("aaaacccc")  # two switches (a load each) instead of seven
    assert passed == [0, 0, 1, 0, 2, 2, 0, 0]
    assert r.delete(*queue_lists(w))


def test_grouping_passes_no_job_that_waited_too_long_and_keeps_priorities(r, queue, sender):
    w = direct_queue(queue, "host:2")
    now = time.time()
    _routed(r, sender, w, "a", sent_at=now - 100)
    _routed(r, sender, w, "c", sent_at=now - 100)  # waited 100 s: nothing passes it any more
    assert _routed(r, sender, w, "a")[1] == 0  # the c has waited 100 s: not passed
    assert _routed(r, sender, w, "c", sent_at=now - 5)[1] == 1  # passes the a sent now
    assert _routed(r, sender, w, "a")[1] == 0  # right behind the newest a already
    assert _run_order(r, w) == list("accaa")
    _routed(r, sender, w, "c", priority=9)  # another Priority's list: nothing to group with, and it runs first
    assert _routed(r, sender, w, "a", priority=1)[1] == 0
    assert _run_order(r, w) == list("caccaaa")
    assert _routed(r, sender, w, "c", max_wait_s=0)[1] == 0  # grouping off: first come, first served
    assert _run_order(r, w) == list("caccaaca")
    assert r.delete(*queue_lists(w))


def test_grouping_never_moves_the_next_job_or_a_job_that_is_not_the_newest(r, queue, sender):
    w = direct_queue(queue, "host:3")
    first, _ = _routed(r, sender, w, "a")
    _routed(r, sender, w, "c")
    assert _routed(r, sender, w, "a")[1] == 1
    assert orjson.loads(r.lindex(queue_lists(w)[broker_priority(5)], -1))["headers"]["id"] == first
    # a job pushed by something else in between (a hand-back, a gateway past the lock's wait): left where it is
    task = sender.send_task("atelier.test", args=[{}], queue=w, priority=broker_priority(5),
                            headers=routing_headers("c"))
    sender.send_task("atelier.test", args=[{}], queue=w, priority=broker_priority(5))  # no headers: not routed
    assert group(r, queue_lists(w)[broker_priority(5)], task.id, "c", max_wait_s=30, look=32) == 0
    assert r.delete(*queue_lists(w))
