"""The storage contract: what every storage backend (:class:`app.contract.storage_base.ObjectStore`) must do,
as a test class to inherit. A backend's test module subclasses :class:`StorageContract`, gives the fixture
``storage_factory`` (a callable returning a new backend instance on one storage, empty at the test's start:
two calls are like the gateway and a worker opening the same folder or bucket) and sets ``tick_s`` (the
resolution of the backend's modification times, with room to spare); every test here then runs on it:

    class TestLocalStorage(StorageContract):
        tick_s = 0.05

        @pytest.fixture
        def storage_factory(self, tmp_path):
            return lambda: LocalStore(tmp_path / "data")

Ages are real: a test that needs an older and a newer object writes one, waits ``tick_s``, takes the time,
waits again and writes the other, so no backend needs a way to forge a modification time.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable

import pytest

from app.contract.storage import INPUTS, NAMESPACES, RESULTS, Storage
from app.contract.storage_base import Namespace, ObjectKey, ObjectStore

UID, OTHER_UID = "a" * 21, "0123456789abcdefghijv"
#: far enough ahead that everything stored in a test is older
FUTURE = 10 * 365 * 24 * 3600.0
#: kinds of stored object that no backend knows in advance (a later issue's persona images): a backend must
#: store any namespace it is given
FLAT = Namespace("personas", names=re.compile(r"^[a-z0-9-]{1,40}\.png$"), swept=False)
GROUPED = Namespace("persona-sets", names=re.compile(r"^\d\.png$"), groups=re.compile(r"^p[0-9]{1,6}$"), swept=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StorageContract:
    #: seconds between two writes whose ages the backend must tell apart
    tick_s: float = 0.05

    @pytest.fixture
    def storage_factory(self) -> Callable[[], ObjectStore]:
        raise NotImplementedError("a backend's test class gives storage_factory")

    @pytest.fixture
    def objects(self, storage_factory) -> ObjectStore:
        return storage_factory()

    @pytest.fixture
    def storage(self, objects) -> Storage:
        return Storage(objects)

    def everything(self, objects: ObjectStore) -> dict[str, list[str]]:
        """What is stored, by namespace, as the expired listing sees it far in the future."""
        found = {ns.name: sorted(objects.expired(ns, time.time() + FUTURE)) for ns in (*NAMESPACES, FLAT, GROUPED)}
        return {k: v for k, v in found.items() if v}

    def tick(self) -> float:
        """A time strictly between what was written before and what is written after."""
        time.sleep(self.tick_s)
        mark = time.time()
        time.sleep(self.tick_s)
        return mark

    # --- the interface ---------------------------------------------------------------------------------------

    def test_is_an_object_store(self, objects):
        assert isinstance(objects, ObjectStore)

    def test_put_get_open_exists_delete(self, objects):
        for key in (INPUTS.key(sha(b"in")), RESULTS.key("0.png", UID), FLAT.key("face-1.png"),
                    GROUPED.key("3.png", "p42")):
            data = f"bytes of {key}".encode()
            assert not objects.exists(key) and objects.get(key) is None
            objects.put(key, data)
            assert objects.exists(key) and objects.get(key) == data
            with objects.open(key) as f:
                assert f.read() == data
            assert objects.delete(key) and not objects.exists(key) and objects.get(key) is None
            assert not objects.delete(key)
        assert self.everything(objects) == {}

    def test_what_one_instance_writes_another_reads(self, storage_factory):
        gateway, worker = Storage(storage_factory()), Storage(storage_factory())
        data = b"\x89PNG input"
        gateway.put_input(sha(data), data)
        with worker.open_input(sha(data)) as f:
            assert f.read() == data
        worker.write_result(UID, 0, b"result")
        assert gateway.read_result(UID, "0.png") == b"result"

    def test_a_stream_is_seekable(self, storage):
        data = bytes(range(256)) * 64
        storage.put_input(sha(data), data)
        with storage.open_input(sha(data)) as f:
            assert f.read(10) == data[:10]
            f.seek(0)
            assert f.read() == data
            f.seek(100)
            assert f.read(4) == data[100:104]

    def test_namespaces_do_not_share_names(self, objects):
        objects.put(FLAT.key("x.png"), b"flat")
        assert objects.get(GROUPED.key("1.png", "p1")) is None
        objects.put(GROUPED.key("1.png", "p1"), b"grouped")
        objects.put(GROUPED.key("1.png", "p2"), b"other group")
        assert objects.get(FLAT.key("x.png")) == b"flat" and objects.get(GROUPED.key("1.png", "p1")) == b"grouped"
        assert self.everything(objects) == {"personas": ["x.png"], "persona-sets": ["p1", "p2"]}

    # --- inputs: stored once -------------------------------------------------------------------------------

    def test_an_input_is_stored_once_and_a_reupload_starts_its_age_again(self, storage, objects):
        data = b"\x89PNG fake"
        assert storage.put_input(sha(data), data) == storage.put_input(sha(data), data) == sha(data)
        assert self.everything(objects) == {"inputs": [sha(data)]}
        assert storage.has_input(sha(data)) and not storage.has_input(sha(b"other"))
        mark = self.tick()
        assert objects.expired(INPUTS, mark) == [sha(data)]
        storage.put_input(sha(data), data)
        assert objects.expired(INPUTS, mark) == []
        assert objects.get(INPUTS.key(sha(data))) == data

    def test_touch_starts_an_objects_age_again_and_says_whether_there_is_one(self, objects):
        key = FLAT.key("a.png")
        assert not objects.touch(key) and not objects.exists(key)  # touch creates nothing
        objects.put(key, b"a")
        mark = self.tick()
        assert objects.expired(FLAT, mark) == ["a.png"]
        assert objects.touch(key) and objects.expired(FLAT, mark) == [] and objects.get(key) == b"a"

    # --- results: overwritten atomically, grouped by task ---------------------------------------------------

    def test_a_result_overwritten_is_replaced_whole(self, storage, objects):
        assert storage.write_result(UID, 0, b"first run") == "0.png"
        assert storage.write_result(UID, 0, b"second") == "0.png"
        assert storage.read_result(UID, "0.png") == b"second"
        assert self.everything(objects) == {"results": [UID]}

    def test_readers_see_the_old_object_or_the_new_never_a_part(self, objects):
        key = RESULTS.key("1.png", UID)
        old, new = b"o" * (1 << 20), b"n" * (1 << 20) + b"longer"
        objects.put(key, old)
        seen: set[bytes] = set()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                data = objects.get(key)
                seen.add(data[:1] + data[-6:] + len(data).to_bytes(4) if data is not None else b"missing")

        readers = [threading.Thread(target=read) for _ in range(2)]
        for t in readers:
            t.start()
        try:
            for i in range(20):
                objects.put(key, new if i % 2 == 0 else old)
        finally:
            stop.set()
            for t in readers:
                t.join()
        whole = {old[:1] + old[-6:] + len(old).to_bytes(4), new[:1] + new[-6:] + len(new).to_bytes(4)}
        assert seen and seen <= whole, seen - whole

    def test_a_stream_reads_the_object_it_opened(self, objects):
        key = RESULTS.key("2.png", UID)
        objects.put(key, b"before" * 1000)
        with objects.open(key) as f:
            objects.put(key, b"after")
            assert f.read() == b"before" * 1000
        assert objects.get(key) == b"after"

    def test_the_results_of_a_task_are_listed_and_deleted_together(self, storage, objects):
        for i in range(3):
            storage.write_result(UID, i, b"png")
        storage.write_result(UID, "clothes-mask.png", b"mask")
        storage.write_result(OTHER_UID, 0, b"another task")
        assert sorted(objects.expired(RESULTS, time.time() + FUTURE)) == sorted([UID, OTHER_UID])  # each task once
        assert storage.delete_results(UID) == 4
        assert all(storage.read_result(UID, n) is None for n in ("0.png", "1.png", "2.png", "clothes-mask.png"))
        assert storage.read_result(OTHER_UID, "0.png") == b"another task"
        assert self.everything(objects) == {"results": [OTHER_UID]}
        assert storage.delete_results(UID) == 0
        storage.write_result(UID, 0, b"a re-run after the sweep")  # a group emptied is written again
        assert objects.delete(RESULTS.key("0.png", UID)) and not objects.delete(RESULTS.key("0.png", UID))
        storage.write_result(UID, 0, b"again")
        assert storage.read_result(UID, "0.png") == b"again"

    def test_a_task_expires_when_its_newest_result_does(self, storage, objects):
        storage.write_result(UID, 0, b"old")
        storage.write_result(OTHER_UID, 0, b"old")
        mark = self.tick()
        storage.write_result(OTHER_UID, 1, b"new")  # a later write to the same task
        assert objects.expired(RESULTS, mark) == [UID]

    def test_a_link_is_a_url_or_none(self, storage):
        storage.write_result(UID, 0, b"png")
        link = storage.result_link(UID, "0.png", int(time.time()) + 60)
        assert link is None or (isinstance(link, str) and link.startswith(("https://", "http://"))), link

    # --- retention -------------------------------------------------------------------------------------------

    def test_expired_listing_by_age(self, objects):
        objects.put(FLAT.key("old.png"), b"1")
        objects.put(GROUPED.key("1.png", "p1"), b"1")
        mark = self.tick()
        objects.put(FLAT.key("new.png"), b"2")
        objects.put(GROUPED.key("1.png", "p2"), b"2")
        assert objects.expired(FLAT, mark) == ["old.png"] and objects.expired(GROUPED, mark) == ["p1"]
        assert objects.expired(FLAT, mark - 3600) == [] and objects.expired(GROUPED, mark - 3600) == []
        assert sorted(objects.expired(FLAT, time.time() + 1)) == ["new.png", "old.png"]

    def test_the_sweep_removes_what_is_older_than_the_retention(self, storage, objects):
        old_input, new_input = b"old input", b"new input"
        storage.put_input(sha(old_input), old_input)
        storage.write_result(UID, 0, b"old")
        storage.write_result(UID, 1, b"old")
        mark = self.tick()
        storage.put_input(sha(new_input), new_input)
        storage.write_result(OTHER_UID, 0, b"new")
        objects.put(FLAT.key("kept.png"), b"a namespace that is not swept")
        now = time.time()
        assert storage.sweep(retention_s=now - mark, now=now) == 2  # one input, one task (two results)
        assert self.everything(objects) == {"inputs": [sha(new_input)], "results": [OTHER_UID],
                                            "personas": ["kept.png"]}
        assert storage.sweep(retention_s=3600) == 0
        assert storage.sweep(retention_s=0, now=time.time() + 1) == 2
        assert self.everything(objects) == {"personas": ["kept.png"]}

    # --- keys and missing objects ---------------------------------------------------------------------------

    @pytest.mark.parametrize("bad", ["../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + "/", ".." , "/etc/passwd"])
    def test_a_bad_content_hash_is_a_value_error(self, storage, objects, bad):
        for call in (lambda: storage.put_input(bad, b"x"), lambda: storage.open_input(bad),
                     lambda: INPUTS.key(bad)):
            with pytest.raises(ValueError):
                call()
        assert not storage.has_input(bad)
        assert self.everything(objects) == {}

    @pytest.mark.parametrize(("uid", "name"), [
        ("../../etc/passwd", "0.png"), ("a" * 20, "0.png"), ("A" * 21, "0.png"), ("a" * 22, "0.png"),
        (UID, "../0.png"), (UID, "100.png"), (UID, ".0.png"), (UID, "0.jpg"), (UID, "x/0.png"), (UID, ""),
        ("..", "0.png"), (".tmp-" + "a" * 16, "0.png"),
    ])
    def test_a_bad_result_address_is_a_value_error(self, storage, objects, uid, name):
        for call in (lambda: storage.write_result(uid, name, b"x"), lambda: storage.read_result(uid, name),
                     lambda: storage.result_link(uid, name, 0), lambda: RESULTS.key(name, uid)):
            with pytest.raises(ValueError):
                call()
        assert self.everything(objects) == {}

    @pytest.mark.parametrize("index", [-1, 100])
    def test_a_result_index_out_of_range_is_a_value_error(self, storage, index):
        with pytest.raises(ValueError):
            storage.write_result(UID, index, b"x")

    def test_a_bad_group_is_a_value_error(self, storage, objects):
        with pytest.raises(ValueError):
            storage.delete_results("../" + "a" * 18)
        with pytest.raises(ValueError):
            objects.delete_group(RESULTS, "..")
        with pytest.raises(ValueError):
            INPUTS.key(sha(b"x"), group=UID)  # a flat namespace has no groups
        with pytest.raises(ValueError):
            RESULTS.key("0.png")  # a grouped one needs its group
        with pytest.raises(ValueError):
            ObjectKey(FLAT, "../x.png")  # however the key is made

    def test_missing_objects(self, storage, objects):
        key = RESULTS.key("0.png", UID)
        assert objects.get(key) is None and not objects.exists(key) and not objects.delete(key)
        assert not objects.touch(key) and objects.delete_group(RESULTS, UID) == 0
        with pytest.raises(FileNotFoundError):
            objects.open(key)
        with pytest.raises(FileNotFoundError):
            storage.open_input(sha(b"never stored"))
        assert storage.read_result(UID, "0.png") is None and not storage.has_input(sha(b"never stored"))
        assert objects.expired(INPUTS, time.time() + FUTURE) == [] and storage.sweep(0, now=time.time() + 1) == 0
