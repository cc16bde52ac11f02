"""A stand-in for the Hugging Face hub on 127.0.0.1, for ``atelier pull``'s tests: the endpoints it uses, served
from repos held in memory, with the faults the tests inject.

* ``GET /api/models/{owner}/{name}/revision/{revision}?blobs=true``: ``{"id", "sha", "siblings": [{"rfilename",
  "size", "blobId", "lfs": {"sha256", "size", "pointerSize"}}]}``, as the hub answers it (``lfs`` only for LFS
  files, ``blobId`` their git blob id); an unknown repo or revision is a 404 with the hub's ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``).
* ``GET /{owner}/{name}/resolve/{revision}/{path}``: a git file is served there; an LFS file (by suffix, as the hub's
  default ``.gitattributes`` has it) is redirected (302) to ``/cdn/{owner}/{name}/{sha256}``, as the hub sends LFS
  files from its CDN. Both honour ``Range: bytes=N-`` (206 and ``Content-Range``; 416 past the end).

Faults: :meth:`StandInHub.cut` (the next transfer of a file sends its headers and ``n`` bytes, then closes the
connection: the client sees a body cut short) and :meth:`StandInHub.corrupt` (a file's bytes served changed, its
listing unchanged). Every transfer of file bytes is logged in :attr:`StandInHub.transfers`.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

#: Suffixes the hub stores through LFS (its default .gitattributes), served by the CDN with a sha256.
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".onnx", ".h5", ".msgpack", ".model")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


@dataclass(frozen=True)
class Transfer:
    """File bytes sent: which file of which repo, from which byte, how many."""

    repo: str
    path: str
    start: int
    sent: int


class StandInHub:
    """The stand-in, serving on a free port of 127.0.0.1 once :meth:`start` ed; :attr:`url` is its HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.transfers: list[Transfer] = []
        self.listings: list[str] = []
        self._cuts: dict[tuple[str, str], int] = {}
        self._corrupt: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- content -----------------------------------------------------------------------------------

    def add_repo(self, repo: str, files: dict[str, bytes]) -> None:
        """A repo at one commit (its id derived from the content), reachable as revision ``main`` and by its id."""
        self.repos[repo] = dict(files)
        digest = hashlib.sha1()  # noqa: S324 - a commit id
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path])
        self.commits[repo] = digest.hexdigest()

    def cut(self, repo: str, path: str, after: int) -> None:
        """The next transfer of ``path`` stops after ``after`` bytes and closes the connection."""
        self._cuts[(repo, path)] = after

    def corrupt(self, repo: str, path: str, on: bool = True) -> None:
        """Serve ``path`` with its first byte changed (same size; the listing keeps the true hash)."""
        (self._corrupt.add if on else self._corrupt.discard)((repo, path))

    def reset(self) -> None:
        """Forget the faults and the logs (between tests)."""
        with self._lock:
            self.transfers.clear()
            self.listings.clear()
            self._cuts.clear()
            self._corrupt.clear()

    def downloaded(self, repo: str | None = None) -> set[str]:
        """The files (``repo/path``) whose bytes were sent."""
        return {f"{t.repo}/{t.path}" for t in self.transfers if repo is None or t.repo == repo}

    def listing(self, repo: str) -> dict:
        files = self.repos[repo]
        siblings = []
        for path, data in sorted(files.items()):
            sibling = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
            if path.endswith(LFS_SUFFIXES):
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
                sibling["blobId"] = git_blob_id(pointer.encode())  # for an LFS file the hub's blobId is the pointer's
                sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                  "pointerSize": len(pointer)}
            siblings.append(sibling)
        return {"id": repo, "modelId": repo, "sha": self.commits[repo], "siblings": siblings}

    # --- serving -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() it first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandInHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hub._get(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="stand-in-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _repo_at(self, h: BaseHTTPRequestHandler, repo: str, revision: str) -> bool:
        if repo not in self.repos:
            self._error(h, 404, "RepoNotFound", "Repository not found")
            return False
        if revision not in ("main", self.commits[repo]):
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return False
        return True

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            repo = f"{parts[2]}/{parts[3]}"
            if self._repo_at(h, repo, parts[5]):
                with self._lock:
                    self.listings.append(repo)
                data = self.listing(repo) if parse_qs(url.query).get("blobs") == ["true"] else {"sha": "?"}
                body = json.dumps(data).encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, path = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            if not self._repo_at(h, repo, parts[3]):
                return
            if path not in self.repos[repo]:
                self._error(h, 404, "EntryNotFound", f"{path} does not exist")
                return
            if path.endswith(LFS_SUFFIXES):
                h.send_response(302)
                h.send_header("Location", f"/cdn/{repo}/{hashlib.sha256(self.repos[repo][path]).hexdigest()}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            self._send_file(h, repo, path)
            return
        if len(parts) == 4 and parts[0] == "cdn":
            repo = f"{parts[1]}/{parts[2]}"
            path = next((p for p, d in self.repos.get(repo, {}).items() if hashlib.sha256(d).hexdigest() == parts[3]),
                        None)
            if path is None:
                self._error(h, 404, "EntryNotFound", "no such object")
                return
            self._send_file(h, repo, path)
            return
        self._error(h, 404, "NotFound", f"the stand-in hub does not serve {url.path}")

    def _send_file(self, h: BaseHTTPRequestHandler, repo: str, path: str) -> None:
        data = self.repos[repo][path]
        if (repo, path) in self._corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, ranged = 0, h.headers.get("Range")
        if ranged:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        body = data[start:]
        with self._lock:
            cut = self._cuts.pop((repo, path), None)
        h.send_response(206 if ranged else 200)
        if ranged:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        sent = body if cut is None else body[:cut]
        h.wfile.write(sent)
        h.wfile.flush()
        with self._lock:
            self.transfers.append(Transfer(repo, path, start, len(sent)))
        if cut is not None:
            h.close_connection = True
            h.connection.shutdown(2)  # SHUT_RDWR: the body ends here, short of its Content-Length
