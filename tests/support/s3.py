"""A real S3 API on 127.0.0.1 for the tests: moto's server mode (``ThreadedMotoServer``), in this process, on
a free port. boto3 reaches it through its standard configuration (``AWS_ENDPOINT_URL`` and dummy credentials),
exactly as a deployment reaches MinIO or Ceph."""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

from app.contract.storage_s3 import CLIENT_CONFIG


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment boto3 needs for a moto server at ``endpoint`` (no profile or config file of the machine's)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


@contextmanager
def s3_environ(endpoint: str) -> Iterator[None]:
    """This process's environment set to :func:`s3_env` (and no ``AWS_PROFILE``) inside the block, as it was after."""
    env = s3_env(endpoint)
    old = {k: os.environ.get(k) for k in (*env, "AWS_PROFILE")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[ThreadedMotoServer, str]:
    """A moto S3 server on 127.0.0.1 and its endpoint URL (stop it with ``.stop()``)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def new_bucket(endpoint: str) -> str:
    """A new, empty bucket on the server at ``endpoint``; its name."""
    name = f"atelier-{uuid.uuid4().hex[:16]}"
    boto3.session.Session().client("s3", endpoint_url=endpoint, config=CLIENT_CONFIG).create_bucket(Bucket=name)
    return name


class MotoServer:
    """A moto S3 server on a fixed port of 127.0.0.1 that a test stops and starts again (an outage of the
    bucket): its buckets and objects outlive a stop, as a real server's disk does (moto keeps them in this
    process)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> MotoServer:
        if self._server is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
