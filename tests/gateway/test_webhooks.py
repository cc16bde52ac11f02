"""Webhooks (docs/API.md "Webhooks") in the in-process gateway against a real Redis, delivered to a real HTTP
receiver on 127.0.0.1: the key file's webhook fields, CallbackUrl's validation, the signed TaskDetail, retries
with backoff and the same webhook-id, the retry window, restarts, the address check at delivery time.

The deliveries are made by calling the gateway's own deliverer (app/webhooks.py ``Deliverer``) with a clock the
test moves; the gateway's background loop is set to wait an hour, so that it never delivers behind the test's
back.
"""
from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from standardwebhooks import Webhook, WebhookVerificationError

from app.contract.settings import get_settings
from app.contract.taskstore import WEBHOOKS, task_key
from app.keys import KeyFileError, KeyStore
from app.services import ConfigError, Services, get_services
from app.webhooks import Deliverer
from support.api import generate_body
from support.signer import picpik_signature
from support.webhooks import Receiver, make_secret, private_redis

HOUR = 3600.0


class Clock:
    """The deliverer's clock: starts at the real time, moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def webhook_redis(tmp_path_factory):
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture()
def receiver():
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture()
def gateway(request, atelier_env, monkeypatch, tmp_path, receiver, webhook_redis):
    """The ``api`` gateway on a Redis of this module's own (emptied for each test), with a key file of its own:

    - ``hook``: a WebhookSecret, no default CallbackUrl;
    - ``default``: a WebhookSecret and a default CallbackUrl on the receiver (named ``localhost``, path /default);
    - ``plain``: no webhook settings.

    ``ATELIER_WEBHOOK_ALLOW_PRIVATE`` is set unless the test is parametrized with ``{"allow_private": False}``."""
    options = getattr(request, "param", {})
    run = uuid.uuid4().hex[:8]
    keys = {name: SimpleNamespace(public=f"wh-{name}-{run}", private=f"{name}-private-{run}", secret=make_secret())
            for name in ("hook", "default", "plain")}
    keys["plain"].secret = None
    default_url = f"http://localhost:{receiver.port}/default"
    entries = [{"PublicKey": k.public, "PrivateKey": k.private} for k in keys.values()]
    entries[0]["WebhookSecret"] = keys["hook"].secret
    entries[1].update(WebhookSecret=keys["default"].secret, CallbackUrl=default_url)
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"keys": entries}))
    monkeypatch.setenv("ATELIER_KEYS_FILE", str(tmp_path / "keys.yaml"))
    monkeypatch.setenv("ATELIER_REDIS_URL", webhook_redis)
    monkeypatch.setenv("ATELIER_WEBHOOK_ALLOW_PRIVATE", "1" if options.get("allow_private", True) else "0")
    monkeypatch.setenv("ATELIER_WEBHOOK_INTERVAL_S", str(HOUR))
    r = redis.Redis.from_url(webhook_redis, decode_responses=True)
    r.flushdb()
    api = request.getfixturevalue("api")
    svc = get_services()
    assert svc.settings.redis_url == webhook_redis and svc.settings.webhook_interval_s == HOUR

    def call(body: dict, key: str = "hook") -> dict:
        body = {"PublicKey": keys[key].public, "request_uuid": str(uuid.uuid4()), **body}
        body["Signature"] = picpik_signature(body, keys[key].private)
        return api(body)

    def ended_task(key: str = "hook", finish: bool = True, **fields) -> str:
        """A task created through the API, then ended: Finished with two images as a worker ends it, or Canceled
        through CancelTask."""
        answer = call(generate_body(**fields), key)
        assert answer["RetCode"] == 0, answer
        uid = answer["TaskUID"]
        if finish:
            assert svc.tasks.mark_finished(uid, ["0.png", "1.png"], seed=1234)
        else:
            assert call({"Action": "CancelTask", "TaskUIDList": [uid]}, key)["RetCode"] == 0
        return uid

    yield SimpleNamespace(call=call, ended_task=ended_task, svc=svc, keys=keys, redis=r, default_url=default_url)
    r.close()


def _outcomes() -> dict[str, float]:
    return {o: REGISTRY.get_sample_value("atelier_webhook_deliveries_total", {"outcome": o}) or 0.0
            for o in ("delivered", "failed", "given_up")}


# --- the key file ----------------------------------------------------------------------------------------

def _keys(tmp_path, entry: str) -> KeyStore:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - PublicKey: shop\n    PrivateKey: s3cret\n" + entry)
    return KeyStore.from_file(path)


def test_a_key_entry_takes_a_webhook_secret_and_a_default_callback_url(tmp_path):
    secret = make_secret()
    store = _keys(tmp_path, f"    WebhookSecret: {secret}\n    CallbackUrl: https://shop.example/hook\n")
    pair = store.pair("shop")
    assert (pair.private_key, pair.webhook_secret, pair.callback_url) == ("s3cret", secret, "https://shop.example/hook")
    assert store.pair("nobody") is None


@pytest.mark.parametrize(("entry", "expected"), [
    ("    CallbackUrl: https://shop.example/hook\n", "CallbackUrl needs a WebhookSecret to sign the deliveries with"),
    ("    WebhookSecret: MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8G\n", "WebhookSecret must be whsec_ followed by"),
    ("    WebhookSecret: whsec_not*base64*at*all*!!\n", "WebhookSecret must be whsec_ followed by the base64 of 24"),
    (f"    WebhookSecret: {make_secret(16)}\n", "the base64 of 24 to 64 random bytes"),
    (f"    WebhookSecret: {make_secret(65)}\n", "the base64 of 24 to 64 random bytes"),
    ("    WebhookSecret: 12345\n", 'WebhookSecret is a number (12345); quote the value: WebhookSecret: "12345"'),
    ("    WebhookSecret:\n", "WebhookSecret is empty"),
    (f"    WebhookSecret: {make_secret()}\n    CallbackUrl: ftp://shop.example/hook\n",
     "CallbackUrl must be an http or https URL with a host"),
    (f"    WebhookSecret: {make_secret()}\n    CallbackUrl: [https://shop.example/hook]\n",
     "CallbackUrl is a list; write one string"),
])
def test_an_unusable_webhook_setting_is_refused_naming_the_entry(tmp_path, entry, expected):
    with pytest.raises(KeyFileError) as e:
        _keys(tmp_path, entry)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'keys.yaml'}: keys[0] (PublicKey shop): ") and expected in message, message
    assert "\n" not in message


def test_a_bad_webhook_secret_stops_the_gateway_at_start(tmp_path, atelier_env):
    (tmp_path / "keys.yaml").write_text("keys:\n  - PublicKey: shop\n    PrivateKey: s3cret\n"
                                        "    WebhookSecret: whsec_c2hvcnQ=\n")  # 5 bytes
    settings = get_settings().model_copy(update={"keys_file": tmp_path / "keys.yaml"})
    with pytest.raises(ConfigError, match=r"keys\[0\] \(PublicKey shop\): WebhookSecret must be whsec_"):
        Services(settings).check()


# --- CallbackUrl in a request --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "rule"), [
    (123, "must be a string"),
    ("", "must be a non-empty string"),
    ("ftp://example.com/hook", "must be an http or https URL with a host, e.g. https://example.com/hook"),
    ("example.com/hook", "must be an http or https URL with a host, e.g. https://example.com/hook"),
    ("http:///hook", "must be an http or https URL with a host, e.g. https://example.com/hook"),
    ("http://example.com:99999/hook", "must be an http or https URL with a host, e.g. https://example.com/hook"),
    ("https://user:pw@example.com/hook", "must not carry a user name or password"),
    ("https://example.com/a hook", "must not contain spaces or control characters"),
    ("https://example.com/" + "a" * 2048, "must have at most 2048 characters"),
])
def test_a_bad_callback_url_is_230_naming_it(gateway, value, rule):
    answer = gateway.call(generate_body(CallbackUrl=value))
    assert (answer["RetCode"], answer["Message"]) == (230, f"Params [CallbackUrl] not available: {rule}")


@pytest.mark.parametrize("gateway", [{"allow_private": False}], indirect=True)
@pytest.mark.parametrize(("url", "address"), [
    ("http://127.0.0.1:8080/hook", "127.0.0.1"),
    ("http://10.1.2.3/hook", "10.1.2.3"),
    ("http://192.168.0.7/hook", "192.168.0.7"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
    ("http://[::1]:8080/hook", "::1"),
    ("http://[fe80::1]/hook", "fe80::1"),
    ("http://[::ffff:10.0.0.1]/hook", None),  # an IPv4-mapped address counts as its IPv4 one
    ("http://localhost:8080/hook", None),  # a name: refused for what it resolves to (127.0.0.1 or ::1)
])
def test_a_private_destination_is_230_unless_the_deployment_allows_it(gateway, url, address):
    answer = gateway.call(generate_body(CallbackUrl=url))
    assert answer["RetCode"] == 230, answer
    assert answer["Message"].startswith("Params [CallbackUrl] not available: must not point to a private, loopback"
                                        " or link-local address ("), answer
    if address:
        assert answer["Message"].endswith(f"({address})")


@pytest.mark.parametrize("gateway", [{"allow_private": False}], indirect=True)
def test_a_public_destination_is_accepted_and_stored_with_the_task(gateway):
    answer = gateway.call(generate_body(CallbackUrl="https://93.184.215.14/hook"))
    assert answer["RetCode"] == 0, answer
    assert gateway.svc.tasks.get(answer["TaskUID"]).callback_url == "https://93.184.215.14/hook"


def test_a_callback_url_from_a_key_without_a_webhook_secret_is_230(gateway, receiver):
    answer = gateway.call(generate_body(CallbackUrl=receiver.url()), key="plain")
    assert answer["RetCode"] == 230
    assert answer["Message"].startswith("Params [CallbackUrl] not available: needs a webhook secret for this PublicKey")


def test_a_task_without_callback_url_schedules_no_delivery(gateway, receiver):
    uid = gateway.ended_task(key="plain")
    assert gateway.svc.tasks.get(uid).callback_url == ""
    assert gateway.redis.zscore(WEBHOOKS, uid) is None
    assert Deliverer(gateway.svc).run_once() == [] and receiver.received == []


# --- delivery --------------------------------------------------------------------------------------------

def test_a_failing_receiver_gets_the_same_signed_task_detail_again_with_growing_delays(gateway, receiver):
    receiver.statuses = [500, 503]
    before = _outcomes()
    uid = gateway.ended_task(CallbackUrl=receiver.url())
    assert gateway.redis.zscore(WEBHOOKS, uid) is not None  # enqueued by the step that ended the task
    clock = Clock()
    start = clock.now
    deliverer = Deliverer(gateway.svc, clock)

    first = deliverer.run_once()
    assert [(a.uid, a.attempt, a.outcome, a.status_code) for a in first] == [(uid, 1, "failed", 500)]
    assert deliverer.run_once() == []  # the next attempt is not due yet
    clock.now = first[0].next_at
    second = deliverer.run_once()
    assert [(a.attempt, a.outcome, a.status_code) for a in second] == [(2, "failed", 503)]
    clock.now = second[0].next_at
    third = deliverer.run_once()
    assert [(a.attempt, a.outcome, a.status_code) for a in third] == [(3, "delivered", 200)]
    assert gateway.redis.zscore(WEBHOOKS, uid) is None
    assert deliverer.run_once() == []

    assert [first[0].next_at - start, second[0].next_at - first[0].next_at] == pytest.approx([5.0, 10.0])

    posts = receiver.wait(3, timeout=5)
    assert len(receiver.received) == 3
    assert {p.headers["webhook-id"] for p in posts} == {f"{uid}-Finished"}
    assert all(p.path == "/hook" for p in posts)
    assert len({p.body for p in posts}) == 1  # the same TaskDetail every time
    payload = Webhook(gateway.keys["hook"].secret).verify(posts[2].body, posts[2].headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(gateway.keys["default"].secret).verify(posts[2].body, posts[2].headers)
    assert posts[2].headers["content-type"] == "application/json"
    assert abs(int(posts[2].headers["webhook-timestamp"]) - time.time()) < 60

    assert (payload["TaskUID"], payload["Status"], payload["Seed"]) == (uid, "Finished", 1234)
    assert [link.split("?")[0] for link in payload["ImgList"]] == [
        f"{gateway.svc.settings.base_url()}/results/{uid}/{name}" for name in ("0.png", "1.png")]
    listed = gateway.call({"Action": "ListTasksDetails", "TaskUIDList": [uid]})["TaskDetailList"]
    assert payload == listed[0]  # the very object ListTasksDetails returns, its signed result links included

    after = _outcomes()
    assert (after["failed"] - before["failed"], after["delivered"] - before["delivered"]) == (2, 1)


def test_retries_go_on_for_the_whole_window_then_give_up(gateway, receiver):
    receiver.statuses = [500] * 100
    before = _outcomes()
    uid = gateway.ended_task(finish=False, CallbackUrl=receiver.url())
    clock = Clock()
    start = clock.now
    deliverer = Deliverer(gateway.svc, clock)
    attempts = []
    while True:
        done = deliverer.run_once()
        assert len(done) == 1
        attempts.append((clock.now, done[0]))
        if done[0].outcome == "given_up":
            break
        assert done[0].outcome == "failed"
        clock.now = done[0].next_at
    times = [t - start for t, _ in attempts]
    waits = [b - a for a, b in zip(times, times[1:])]
    retry_for = gateway.svc.settings.webhook_retry_for_s
    assert retry_for >= HOUR
    assert waits[:4] == pytest.approx([5.0, 10.0, 20.0, 40.0])
    assert all(b >= a for a, b in zip(waits[:-2], waits[1:-1])) and max(waits) == pytest.approx(1800.0)
    assert times[-1] == pytest.approx(retry_for)  # the last attempt is made at the end of the window
    assert (retry_for, len(attempts)) == (3 * HOUR, 15)  # the schedule docs/API.md "Webhooks" describes
    assert gateway.redis.zscore(WEBHOOKS, uid) is None
    posts = receiver.wait(len(attempts), timeout=5)
    assert {p.headers["webhook-id"] for p in posts} == {f"{uid}-Canceled"}
    assert json.loads(posts[-1].body)["Status"] == "Canceled"
    after = _outcomes()
    assert (after["failed"] - before["failed"], after["given_up"] - before["given_up"]) == (len(attempts) - 1, 1)


def test_a_pending_delivery_survives_a_restart_and_a_crash_mid_attempt(gateway, receiver):
    uid = gateway.ended_task(CallbackUrl=receiver.url())
    clock = Clock()
    # a gateway claims the attempt, then dies before it settles it
    crashed = Deliverer(gateway.svc, clock)
    claim = crashed.claim()
    assert (claim.uid, claim.attempt) == (uid, 1)
    del crashed
    # a new process: new services, new deliverer, the same Redis
    get_services.cache_clear()
    svc = Services(get_settings())
    assert svc is not gateway.svc
    restarted = Deliverer(svc, clock)
    assert restarted.run_once() == []  # the claim's lease holds: no two gateways make the same attempt at once
    clock.now += 10 * 60
    done = restarted.run_once()
    assert [(a.uid, a.attempt, a.outcome) for a in done] == [(uid, 2, "delivered")]
    post = receiver.wait(1, timeout=5)[0]
    assert post.headers["webhook-id"] == f"{uid}-Finished"
    assert Webhook(gateway.keys["hook"].secret).verify(post.body, post.headers)["TaskUID"] == uid


def test_the_key_default_callback_url_is_used_when_the_request_names_none(gateway, receiver):
    uid = gateway.ended_task(key="default", finish=False)
    assert gateway.svc.tasks.get(uid).callback_url == gateway.default_url
    own = gateway.ended_task(key="default", finish=False, CallbackUrl=receiver.url("/own"))
    done = Deliverer(gateway.svc).run_once()
    assert sorted((a.uid, a.outcome) for a in done) == sorted([(uid, "delivered"), (own, "delivered")])
    by_path = {p.path: p for p in receiver.wait(2, timeout=5)}
    assert set(by_path) == {"/default", "/own"}
    assert by_path["/default"].headers["host"] == f"localhost:{receiver.port}"  # the name, though pinned to its address
    for post, expected in ((by_path["/default"], uid), (by_path["/own"], own)):
        assert Webhook(gateway.keys["default"].secret).verify(post.body, post.headers)["TaskUID"] == expected


def test_the_address_is_checked_again_at_delivery(gateway, receiver):
    uid = gateway.ended_task(CallbackUrl=receiver.url())  # accepted: this deployment allowed private addresses
    strict = Services(gateway.svc.settings.model_copy(update={"webhook_allow_private": False}))
    done = Deliverer(strict, Clock()).run_once()
    assert [(a.uid, a.outcome) for a in done] == [(uid, "failed")]
    assert done[0].reason.startswith("127.0.0.1 (the address of 127.0.0.1) is private, loopback or link-local")
    assert receiver.received == []
    assert gateway.redis.zscore(WEBHOOKS, uid) == pytest.approx(done[0].next_at)  # retried: DNS may change


def test_a_redirect_is_not_followed(gateway, receiver):
    receiver.statuses = [307]
    uid = gateway.ended_task(CallbackUrl=receiver.url())
    done = Deliverer(gateway.svc, Clock()).run_once()
    assert [(a.uid, a.outcome, a.status_code) for a in done] == [(uid, "failed", 307)]
    assert [p.path for p in receiver.received] == ["/hook"]


def test_a_delivery_whose_task_record_expired_is_dropped(gateway, receiver):
    uid = gateway.ended_task(CallbackUrl=receiver.url())
    gateway.redis.delete(task_key(uid))
    done = Deliverer(gateway.svc).run_once()
    assert [(a.uid, a.outcome) for a in done] == [(uid, "given_up")]
    assert gateway.redis.zscore(WEBHOOKS, uid) is None and receiver.received == []
