"""The S3-compatible backend (app/contract/storage_s3.py) against a real S3 API on 127.0.0.1 (moto's server
mode, tests/support/s3.py): the whole storage contract (tests/support/storage_contract.py), ``open_storage``'s
choice of backend, presigned result links that download, and a bucket that cannot be reached: an OSError
naming the storage, which the gateway answers with 150."""
from __future__ import annotations

import os
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.contract.codes import STORAGE_UNAVAILABLE_MESSAGE, RetCode
from app.contract.settings import Settings
from app.contract.storage import RESULTS, Storage, open_storage
from app.contract.storage_local import LocalStore
from app.contract.storage_s3 import MAX_PRESIGN_S, S3Store, parse_s3_url
from app.services import get_services
from support.api import PUB, png_b64, signed
from support.s3 import free_port, new_bucket, s3_env, start_moto
from support.storage_contract import OTHER_UID, UID, StorageContract


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server for the session, and boto3's environment pointing at it."""
    server, endpoint = start_moto()
    env = s3_env(endpoint)
    old = {k: os.environ.get(k) for k in (*env, "AWS_PROFILE")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A fresh, empty bucket for one test."""
    return new_bucket(s3_endpoint)


class TestS3Storage(StorageContract):
    # an object's age is its LastModified, which S3 (and moto) keep to the second: ages a second apart are told
    # apart, as the data dir's mtimes are 0.05 s apart
    tick_s = 1.1

    @pytest.fixture
    def storage_factory(self, bucket):
        return lambda: S3Store(bucket, "atelier/test")


def test_a_prefix_keeps_stores_of_one_bucket_apart(bucket):
    a, b = Storage(S3Store(bucket, "a")), Storage(S3Store(bucket, "/b/"))
    a.write_result(UID, 0, b"of a")
    assert b.read_result(UID, "0.png") is None and b.objects.expired(RESULTS, time.time() + 60) == []
    assert b.delete_results(UID) == 0 and a.read_result(UID, "0.png") == b"of a"
    assert S3Store(bucket).client.head_object(Bucket=bucket, Key=f"a/results/{UID}/0.png")["ContentLength"] == 4


@pytest.mark.parametrize(("url", "parsed"), [("s3://bkt", ("bkt", "")), ("s3://bkt/", ("bkt", "")),
                                             ("s3://bkt/a/b/", ("bkt", "a/b"))])
def test_an_s3_url_is_a_bucket_and_a_prefix(url, parsed):
    assert parse_s3_url(url) == parsed


@pytest.mark.parametrize("url", ["s3:///prefix", "http://bkt/x", "bkt/x", "s3://bkt/x?versionId=1"])
def test_anything_else_is_not_an_s3_url(url):
    with pytest.raises(ValueError):
        parse_s3_url(url)


def test_a_storage_url_setting_is_validated(monkeypatch):
    monkeypatch.setenv("ATELIER_STORAGE_URL", "http://bucket/x")
    with pytest.raises(ValueError, match="storage_url"):
        Settings()
    monkeypatch.setenv("ATELIER_STORAGE_URL", "")
    monkeypatch.setenv("ATELIER_RESULT_LINKS", "public")
    with pytest.raises(ValueError, match="result_links"):
        Settings()


def test_open_storage_picks_the_bucket_for_an_s3_url_and_the_data_dir_otherwise(s3_endpoint, bucket, tmp_path):
    local = open_storage(Settings(data_dir=tmp_path))
    assert isinstance(local.objects, LocalStore) and local.objects.root == tmp_path
    st = open_storage(Settings(data_dir=tmp_path, storage_url=f"s3://{bucket}/deploy/1"))
    assert isinstance(st.objects, S3Store) and (st.objects.bucket, st.objects.prefix) == (bucket, "deploy/1")
    assert not st.objects.presign and st.result_link(UID, "0.png", int(time.time()) + 60) is None  # gateway links
    st.write_result(UID, 0, b"png")
    assert Storage(S3Store(bucket, "deploy/1")).read_result(UID, "0.png") == b"png"
    assert list(tmp_path.iterdir()) == []  # nothing on local disk
    presigning = open_storage(Settings(storage_url=f"s3://{bucket}/deploy/1", result_links="presigned"))
    assert presigning.objects.presign
    # the data dir has no links of its own: presigned is ignored there
    assert open_storage(Settings(data_dir=tmp_path, result_links="presigned")).result_link(UID, "0.png", 0) is None


def expires_in(link: str) -> int:
    """How long a presigned URL (Signature Version 4) says it is valid, in seconds."""
    return int(parse_qs(urlsplit(link).query)["X-Amz-Expires"][0])


def test_a_presigned_link_downloads_the_result_until_it_expires(s3_endpoint, bucket):
    st = Storage(S3Store(bucket, "p", presign=True))
    st.write_result(UID, 0, b"\x89PNG the result")
    link = st.result_link(UID, "0.png", int(time.time()) + 3600)
    assert link.startswith(s3_endpoint + f"/{bucket}/p/results/{UID}/0.png?")  # path-style
    got = httpx.get(link)
    assert got.status_code == 200 and got.content == b"\x89PNG the result"
    other = st.result_link(OTHER_UID, "0.png", int(time.time()) + 3600)  # signed, but no such object
    assert httpx.get(other).status_code == 404
    assert httpx.get(link.split("?")[0]).status_code == 403  # the signature is what opens it
    # valid until the retention ends (moto does not enforce X-Amz-Expires; MinIO, Ceph and S3 do)
    assert 3598 <= expires_in(link) <= 3600
    assert expires_in(st.result_link(UID, "0.png", int(time.time()) - 10)) == 1  # the retention ended: a second
    assert expires_in(st.result_link(UID, "0.png", int(time.time()) + 30 * 86400)) == MAX_PRESIGN_S  # S3's most


def test_a_stopped_server_is_an_oserror_naming_the_storage(s3_endpoint):
    server, endpoint = start_moto()
    name = new_bucket(endpoint)
    old = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        st = Storage(S3Store(name, "x"))
    finally:
        os.environ["AWS_ENDPOINT_URL"] = old
    st.write_result(UID, 0, b"png")
    server.stop()
    key = RESULTS.key("0.png", UID)
    for call in (lambda: st.write_result(UID, 1, b"png"), lambda: st.read_result(UID, "0.png"),
                 lambda: st.objects.open(key), lambda: st.objects.exists(key), lambda: st.objects.touch(key),
                 lambda: st.delete_results(UID), lambda: st.sweep(0)):
        with pytest.raises(OSError, match=f"storage s3://{name}") as info:
            call()
        assert not isinstance(info.value, FileNotFoundError)  # not "missing": unreachable


def test_a_missing_bucket_is_an_oserror_not_a_missing_object(bucket):
    st = S3Store(bucket + "-never-made")
    with pytest.raises(OSError, match="storage s3://") as info:
        st.put(RESULTS.key("0.png", UID), b"x")
    assert not isinstance(info.value, FileNotFoundError)
    with pytest.raises(OSError, match="storage s3://"):
        st.get(RESULTS.key("0.png", UID))


@pytest.fixture
def unreachable_bucket(s3_endpoint, monkeypatch):
    """The deployment's storage is a bucket on an endpoint where nothing listens (set before ``api`` starts)."""
    monkeypatch.setenv("ATELIER_STORAGE_URL", "s3://atelier-unreachable/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")


def test_a_submission_with_the_bucket_unreachable_is_150_naming_the_storage(unreachable_bucket, api):
    from PIL import Image
    out = api(signed({"Action": "ResizeImage", "Image": png_b64(Image.new("RGB", (40, 30), (9, 9, 9))),
                      "Width": 128, "Height": 96}))
    assert out["RetCode"] == RetCode.UNAVAILABLE == 150, out
    assert out["Message"] == STORAGE_UNAVAILABLE_MESSAGE and "storage" in out["Message"]


@pytest.fixture(params=["gateway", "presigned"])
def bucket_deployment(request, s3_endpoint, bucket, monkeypatch):
    """The deployment's storage is a bucket of the moto server, in either link mode (set before ``api`` starts)."""
    monkeypatch.setenv("ATELIER_STORAGE_URL", f"s3://{bucket}/deploy")
    monkeypatch.setenv("ATELIER_RESULT_LINKS", request.param)
    return request.param


def test_list_tasks_details_links_download_the_result_from_the_bucket_in_both_modes(bucket_deployment, api):
    svc = get_services()
    assert isinstance(svc.storage.objects, S3Store)
    uid, _ = svc.tasks.create(PUB["pk-alice"], None, "GenerateFromMannequin", 1, 0)
    svc.storage.write_result(uid, 0, b"\x89PNG from the bucket")
    svc.tasks.mark_finished(uid, ["0.png"], 1)
    [link] = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]["ImgList"]
    if bucket_deployment == "presigned":  # the bucket's URL: the client downloads without the gateway
        assert link.startswith(os.environ["AWS_ENDPOINT_URL"]) and "X-Amz-Signature=" in link
        assert 0 < expires_in(link) <= get_services().settings.result_retention_s
        got = httpx.get(link)
    else:  # the gateway's signed link: the gateway streams the result from the bucket
        assert link.startswith(svc.settings.base_url() + f"/results/{uid}/0.png?")
        got = api.client.get(link.removeprefix(svc.settings.base_url()))
    assert got.status_code == 200 and got.content == b"\x89PNG from the bucket"
    if bucket_deployment == "gateway":  # the bucket unreachable now: 503, the link stays valid
        os.environ["AWS_ENDPOINT_URL"], endpoint = f"http://127.0.0.1:{free_port()}", os.environ["AWS_ENDPOINT_URL"]
        try:
            svc.__dict__.pop("storage", None)  # a storage opened anew on the dead endpoint
            down = api.client.get(link.removeprefix(svc.settings.base_url()))
        finally:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        assert down.status_code == 503 and down.json()["detail"] == STORAGE_UNAVAILABLE_MESSAGE
