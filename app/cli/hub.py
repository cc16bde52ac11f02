"""The little of the Hugging Face hub's HTTP API that ``atelier pull`` uses, over httpx.

* :meth:`Hub.listing`: ``GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true`` (what huggingface_hub's
  ``model_info(files_metadata=True)`` asks): the commit the revision points at, and each file of the repo with its
  size and what the hub publishes to check it: an LFS file's sha256 (``lfs.sha256``), any other file's git blob id
  (``blobId``, the sha1 of ``"blob <size>\\0"`` followed by the content).
* :meth:`Hub.download`: ``GET {endpoint}/{repo}/resolve/{commit}/{path}`` (redirects followed: the hub sends LFS
  files from a CDN) into ``<target>.part``, hashed while it streams; an interrupted transfer is resumed with
  ``Range: bytes=N-`` (a server that ignores it is read again from the start), a ``.part`` left by an earlier run
  too; the file becomes ``target`` only when its size and hash are the listing's. A mismatch deletes the ``.part``.
* :meth:`Hub.read`: a small file into memory, checked the same way (a pipeline's ``model_index.json``).

The endpoint is ``HF_ENDPOINT`` (as huggingface_hub reads it; default https://huggingface.co); ``HF_TOKEN``, when
set, is sent as a bearer token (gated and private repos). Every failure is a :class:`HubError` whose message is one
line naming what could not be reached or what was wrong. Why httpx rather than huggingface_hub's own download
functions: models_config/README.md "Real models: atelier pull".
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_ENDPOINT = "https://huggingface.co"
#: A download not yet verified: ``<target>.part``, resumed by the next pull.
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20


class HubError(Exception):
    """A failure told in one line: what could not be reached, or what was wrong, and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, as the hub lists it."""

    path: str
    size: int
    sha256: str | None = None   # LFS files
    blob_id: str | None = None  # other files: git's blob id

    @property
    def check(self) -> str:
        """What identifies the content: ``sha256:<hex>``, ``git:<blob id>``, or ``size:<n>`` (the hub gave no hash)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"git:{self.blob_id}" if self.blob_id else f"size:{self.size}"

    @property
    def check_name(self) -> str:
        return "sha256" if self.sha256 else "git blob id" if self.blob_id else "size"

    def hasher(self) -> Any:
        """A hashlib object that ends at :attr:`expected` for the right content (None: size only)."""
        if self.sha256:
            return hashlib.sha256()
        if self.blob_id:
            h = hashlib.sha1()  # noqa: S324 - git's blob id is a sha1; it identifies, the sha256s secure the weights
            h.update(b"blob %d\0" % self.size)
            return h
        return None

    @property
    def expected(self) -> str | None:
        """The hex digest :meth:`hasher` must end at, or None (size only)."""
        value = self.sha256 or self.blob_id
        return value.lower() if value else None


@dataclass(frozen=True)
class Listing:
    """A repo at the commit a revision pointed at when it was listed: every file by its path in the repo."""

    repo: str
    revision: str
    commit: str
    files: dict[str, RemoteFile] = field(default_factory=dict)


def file_matches(path: Path, remote: RemoteFile) -> bool:
    """Whether the local ``path`` holds ``remote``'s content (size, then hash: reads the whole file)."""
    try:
        if path.stat().st_size != remote.size:
            return False
        h = remote.hasher()
        if h is None:
            return True
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
    except OSError:
        return False
    return h.hexdigest() == remote.expected


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


class Hub:
    """A client of one hub endpoint. ``retries``: how many times a transfer that breaks is taken up again (at the
    byte where it broke; the count starts again whenever bytes came through), waiting ``backoff_s``, doubled each
    time."""

    def __init__(self, endpoint: str | None = None, token: str | None = None, *, retries: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 60.0):
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"User-Agent": "atelier-pull", "Accept-Encoding": "identity"}
        token = token or os.environ.get("HF_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"  # httpx drops it on a redirect to another host (the CDN)
        self.client = httpx.Client(headers=headers, follow_redirects=True,
                                   timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- listing -------------------------------------------------------------------------------------

    def listing(self, repo: str, revision: str | None = None) -> Listing:
        """The files of ``repo`` at ``revision`` (default ``main``), with sizes and hashes. Raises :class:`HubError`."""
        revision = revision or "main"
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        try:
            r = self.client.get(url, params={"blobs": "true"})
        except httpx.TransportError as e:
            raise HubError(f"cannot reach {self.endpoint} (hub repo {repo}): {_reason(e)}") from None
        self._check(r, repo, f"revision {revision}")
        try:
            doc = r.json()
            commit = str(doc["sha"])
            files = {}
            for s in doc["siblings"]:
                lfs = s.get("lfs") or None
                size = lfs["size"] if lfs else s["size"]
                files[s["rfilename"]] = RemoteFile(path=s["rfilename"], size=int(size),
                                                   sha256=lfs.get("sha256") if lfs else None,
                                                   blob_id=None if lfs else s.get("blobId"))
        except (ValueError, KeyError, TypeError):
            raise HubError(f"{self.endpoint} did not answer hub repo {repo}'s file listing with sizes (is HF_ENDPOINT"
                           " a Hugging Face hub?)") from None
        return Listing(repo=repo, revision=revision, commit=commit, files=files)

    def _check(self, r: httpx.Response, repo: str, what: str) -> None:
        """Raise a one-line :class:`HubError` for an error answer (the hub's ``X-Error-Code`` says which)."""
        if r.status_code < 400:
            return
        code = r.headers.get("X-Error-Code", "")
        where = f"hub repo {repo} at {self.endpoint}"
        if code == "GatedRepo" or (r.status_code == 403 and "gated" in r.text.lower()):
            raise HubError(f"{where} is gated: accept its terms on its page and set HF_TOKEN")
        if code == "RevisionNotFound":
            raise HubError(f"{where} has no {what}")
        if code == "EntryNotFound":
            raise HubError(f"{where} has no file {what}")
        if r.status_code in (401, 403, 404):
            raise HubError(f"{where} was not found ({r.status_code}; a private or gated repo needs HF_TOKEN)")
        raise HubError(f"{self.endpoint} answered {r.status_code} for {what} of hub repo {repo}")

    def _url(self, listing: Listing, remote: RemoteFile) -> str:
        return f"{self.endpoint}/{listing.repo}/resolve/{listing.commit}/{quote(remote.path)}"

    # --- files ---------------------------------------------------------------------------------------

    def read(self, listing: Listing, remote: RemoteFile) -> bytes:
        """A small file's content, checked against the listing. Raises :class:`HubError`."""
        try:
            r = self.client.get(self._url(listing, remote))
        except httpx.TransportError as e:
            raise HubError(f"cannot reach {self.endpoint} (hub repo {listing.repo}, {remote.path}): {_reason(e)}"
                           ) from None
        self._check(r, listing.repo, remote.path)
        h = remote.hasher()
        if h is not None:
            h.update(r.content)
        if len(r.content) != remote.size or (h is not None and h.hexdigest() != remote.expected):
            raise HubError(f"{listing.repo}/{remote.path} does not match the hub's listing ({remote.check_name})")
        return r.content

    def download(self, listing: Listing, remote: RemoteFile, target: Path,
                 progress: Callable[[int], None] = lambda done: None) -> int:
        """Fetch ``remote`` into ``target`` through ``<target>.part``, resuming what a ``.part`` holds; ``progress``
        gets the bytes of the file held so far after each chunk. Returns the bytes transferred. Raises
        :class:`HubError` (the ``.part`` kept when the connection was lost, deleted when the content was wrong)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + PART_SUFFIX)
        have = part.stat().st_size if part.exists() else 0
        if have > remote.size:
            part.unlink()
            have = 0
        digest = remote.hasher()
        if have and digest is not None:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    digest.update(chunk)
        progress(have)
        transferred, failures, url = 0, 0, self._url(listing, remote)
        while have < remote.size:
            before = have
            try:
                with self.client.stream("GET", url, headers={"Range": f"bytes={have}-"} if have else {}) as r:
                    if r.status_code == 416:  # nothing left to send: the .part is longer than the file (checked below)
                        break
                    self._check(r, listing.repo, remote.path)
                    if have and (r.status_code != 206 or not r.headers.get("Content-Range", "").startswith(
                            f"bytes {have}-")):
                        have, digest = 0, remote.hasher()  # the range was not honoured: from the start
                    with open(part, "ab" if have else "wb") as f:
                        for chunk in r.iter_raw():  # as received: a break loses none of it
                            f.write(chunk)
                            if digest is not None:
                                digest.update(chunk)
                            have += len(chunk)
                            transferred += len(chunk)
                            progress(have)
                            if have > remote.size:
                                break
                if have >= remote.size:
                    break
                reason = "the transfer ended early"
            except httpx.TransportError as e:
                reason = _reason(e)
            failures = 1 if have > before else failures + 1
            if failures > self.retries:
                raise HubError(f"lost {self.endpoint} while downloading {listing.repo}/{remote.path} ({reason}); its"
                               f" first {have} of {remote.size} bytes are kept in {part}: run atelier pull again to"
                               " resume") from None
            time.sleep(self.backoff_s * 2 ** (failures - 1))
        got = digest.hexdigest() if digest is not None else None
        if have != remote.size or (got is not None and got != remote.expected):
            part.unlink(missing_ok=True)
            found = f"{have} bytes" if have != remote.size else f"{remote.check_name} {got}"
            raise HubError(f"{listing.repo}/{remote.path} does not match the hub's listing (expected {remote.size}"
                           f" bytes, {remote.check}; got {found}): refused and deleted, run atelier pull again")
        os.replace(part, target)
        return transferred
