"""The S3-compatible storage backend (AWS S3, MinIO, Ceph RGW ...): one bucket and a key prefix, chosen by
``ATELIER_STORAGE_URL=s3://bucket/prefix`` (docs/deployment.md "Object storage"). Nothing is shared between
the gateway and the workers but Redis and the bucket.

- the object of key ``namespace/[group/]name`` is ``{prefix}/namespace/[group/]name`` (``str(ObjectKey)``);
- the endpoint, credentials and region are boto3's own configuration (``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` and the config
  files): Atelier has no settings of its own for them;
- path-style addressing and checksums only where an operation requires them: what MinIO and Ceph accept;
- a put is one PutObject (S3 replaces an object atomically: a reader sees the old object or the new one, never
  a part); an object's age is its ``LastModified``, which :meth:`S3Store.touch` starts again by copying the
  object onto itself (server side, no bytes through the client);
- :meth:`S3Store.open` reads the object whole when it is opened (in memory, spilling to a temporary file above
  :data:`SPOOL_BYTES`), so the stream is seekable and is the object as it was, whatever is written meanwhile;
- every failure of the bucket (unreachable, refused, timed out, an error answer) is an ``OSError`` whose
  message names the storage (the gateway answers 150); a missing object is None / False / FileNotFoundError,
  as :class:`~app.contract.storage_base.ObjectStore` says.

boto3 is light (no torch): the gateway imports this module.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.contract.storage_base import Namespace, ObjectKey

#: ``ATELIER_STORAGE_URL``'s scheme that selects this backend.
S3_SCHEME = "s3"
#: above this size an opened object is kept in a temporary file rather than in memory (inputs and results are
#: a few MB at most: in practice always in memory).
SPOOL_BYTES = 32 * 1024 * 1024
#: DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
#: the error codes of a missing object (HeadObject answers a bare 404).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})

#: the longest a presigned URL of Signature Version 4 may be valid (S3's limit: seven days); a longer retention
#: gives links valid this long.
MAX_PRESIGN_S = 7 * 24 * 3600

#: the client's configuration: path-style addressing and checksums only where required (MinIO, Ceph and older
#: S3-compatible servers refuse or mis-handle the newer default checksums), Signature Version 4 (also for the
#: presigned URLs: botocore would sign those of a custom endpoint with the legacy version 2), short timeouts, a
#: few retries. A request that still fails is an OSError: the gateway answers 150.
CLIENT_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    connect_timeout=5,
    read_timeout=30,
    retries={"max_attempts": 3, "mode": "standard"},
)

T = TypeVar("T")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``("bucket", "prefix")`` (the prefix without its slashes, maybe empty);
    ValueError if it is not such a URL."""
    parts = urlsplit(url)
    if parts.scheme != S3_SCHEME or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3Store:
    """:class:`~app.contract.storage_base.ObjectStore` on a bucket. ``presign``: :meth:`link` gives presigned
    GET URLs (``ATELIER_RESULT_LINKS=presigned``); otherwise None, the gateway serves the results itself."""

    def __init__(self, bucket: str, prefix: str = "", *, presign: bool = False, client=None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign = presign
        self.client = client if client is not None else boto3.session.Session().client("s3", config=CLIENT_CONFIG)

    @classmethod
    def from_url(cls, url: str, *, presign: bool = False) -> S3Store:
        """The store of ``s3://bucket/prefix``; ValueError for another URL."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, presign=presign)

    def _name(self, key: ObjectKey | str) -> str:
        """The bucket's object name of ``key`` (or of a key prefix such as ``results/<uid>/``)."""
        return f"{self.prefix}/{key}" if self.prefix else str(key)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, with every failure of the bucket as an OSError naming the storage (a missing object's
        ClientError is passed on: the caller says what missing means)."""
        try:
            return fn()
        except ClientError as e:
            if _missing(e):
                raise
            raise OSError(f"storage s3://{self.bucket}: {what} failed: {e}") from e
        except BotoCoreError as e:  # unreachable endpoint, timeouts, no credentials ...
            raise OSError(f"storage s3://{self.bucket}: {what} failed: {e}") from e

    def put(self, key: ObjectKey, data: bytes) -> None:
        self._call(f"writing {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=self._name(key),
                                                                     Body=data))

    def touch(self, key: ObjectKey) -> bool:
        name = self._name(key)
        try:  # copied onto itself: the object's LastModified is now; its bytes never leave the bucket
            self._call(f"touching {key}", lambda: self.client.copy_object(
                Bucket=self.bucket, Key=name, CopySource={"Bucket": self.bucket, "Key": name},
                MetadataDirective="REPLACE"))
        except ClientError:
            return False
        return True

    def get(self, key: ObjectKey) -> bytes | None:
        def read() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()
        try:
            return self._call(f"reading {key}", read)
        except ClientError:
            return None

    def open(self, key: ObjectKey) -> BinaryIO:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

        def read() -> None:
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
            for chunk in body.iter_chunks(1 << 20):
                spool.write(chunk)
        try:
            self._call(f"reading {key}", read)
        except ClientError:
            spool.close()
            raise FileNotFoundError(f"storage s3://{self.bucket}: no object {key}") from None
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[return-value]  # a seekable binary file

    def exists(self, key: ObjectKey) -> bool:
        try:
            self._call(f"looking up {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=self._name(key)))
        except ClientError:
            return False
        return True

    def delete(self, key: ObjectKey) -> bool:
        # DeleteObject answers the same whether there was an object or not: look first (a concurrent delete
        # in between is the same answer as one just before)
        if not self.exists(key):
            return False
        self._call(f"deleting {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._name(key)))
        return True

    def delete_group(self, namespace: Namespace, group: str) -> int:
        prefix = self._name(f"{namespace.name}/{namespace.check_group(group)}/")
        names = [obj["Key"] for obj in self._list(prefix)]
        for i in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": n} for n in names[i:i + DELETE_BATCH]]
            answer = self._call(f"deleting {namespace.name}/{group}", lambda b=batch: self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}))
            if answer.get("Errors"):
                raise OSError(f"storage s3://{self.bucket}: deleting {namespace.name}/{group} failed:"
                              f" {answer['Errors'][0]}")
        return sum(1 for n in names if namespace.is_name(n.rsplit("/", 1)[-1]))

    def expired(self, namespace: Namespace, before: float) -> list[str]:
        top = self._name(f"{namespace.name}/")
        newest: dict[str, float] = {}  # a group's newest object, or a flat namespace's objects
        for obj in self._list(top):
            parts = obj["Key"][len(top):].split("/")
            if namespace.grouped:
                if len(parts) != 2 or not (namespace.is_group(parts[0]) and namespace.is_name(parts[1])):
                    continue
                entry = parts[0]
            else:
                if len(parts) != 1 or not namespace.is_name(parts[0]):
                    continue
                entry = parts[0]
            newest[entry] = max(newest.get(entry, float("-inf")), obj["LastModified"].timestamp())
        return [entry for entry, when in newest.items() if when < before]

    def link(self, key: ObjectKey, expires_at: int) -> str | None:
        if not self.presign:
            return None
        expires_in = min(MAX_PRESIGN_S, max(1, int(expires_at - time.time())))
        return self._call(f"signing a link to {key}", lambda: self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key)}, ExpiresIn=expires_in))

    def _list(self, prefix: str) -> Iterator[dict]:
        """Every object whose name starts with ``prefix``, page after page (a thousand a page)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        page_iter = iter(pages)
        while True:
            page = self._call(f"listing {prefix}", lambda: next(page_iter, None))
            if page is None:
                return
            yield from page.get("Contents", ())


def _missing(e: ClientError) -> bool:
    """Whether ``e`` is S3's answer for a missing object."""
    return str(e.response.get("Error", {}).get("Code")) in _MISSING
