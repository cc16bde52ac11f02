"""What the gateway and the workers store per task, and the one way to reach it (:class:`Storage`, built by
:func:`open_storage`):

- inputs (namespace ``inputs``): each uploaded image once, by its content hash; a re-upload starts its age again;
- personas (namespace ``personas``, grouped by PersonaCode): a persona's images and cached embeddings, kept until
  DeletePersona (the sweep never visits them);
- results (namespace ``results``, grouped by TaskUID): ``{i}.png`` written by the worker, and the clothes mask a
  worker made itself (:data:`AUTO_MASK_NAME`); written atomically, so a re-run of the same task after a worker
  crash replaces the earlier run's files instead of adding to them. A task's results expire and go together.

Everything older than the retention period is removed by :meth:`Storage.sweep`. Where and how bytes are kept
is the backend's business (:mod:`app.contract.storage_base`, the interface; :mod:`app.contract.storage_local`,
the data dir; :mod:`app.contract.storage_s3`, an S3-compatible bucket): nobody outside these modules knows a
stored object's path. A new kind of stored object is one :class:`~app.contract.storage_base.Namespace` here,
added to :data:`NAMESPACES`, and its typed helpers.
"""
from __future__ import annotations

import re
import time
from typing import BinaryIO

from app.contract.limits import PERSONA_CODE_PATTERN
from app.contract.settings import Settings
from app.contract.storage_base import Namespace, ObjectStore
from app.contract.storage_local import LocalStore
from app.contract.storage_s3 import S3Store

#: The result file of a clothes mask the worker made itself (GenerateFromMannequin without ClothesMaskIndex).
AUTO_MASK_NAME = "clothes-mask.png"

#: Uploaded images, by SHA-256 content hash.
INPUTS = Namespace("inputs", names=re.compile(r"^[0-9a-f]{64}$"))
#: A task's results, grouped by its TaskUID: ``0.png`` .. ``99.png`` and :data:`AUTO_MASK_NAME`.
RESULTS = Namespace("results", names=re.compile(r"^(\d{1,2}|clothes-mask)\.png$"), groups=re.compile(r"^[0-9a-v]{21}$"))

#: A persona's objects, grouped by its PersonaCode: its images (``<content hash>``, as uploaded) and the cached
#: embeddings of each adapter encoder (``embeds-<32 hex>.safetensors``). Never swept: a persona lives until
#: DeletePersona (docs/API.md "Personas").
PERSONAS = Namespace("personas", names=re.compile(r"^([0-9a-f]{64}|embeds-[0-9a-f]{32}\.safetensors)$"),
                     groups=re.compile(PERSONA_CODE_PATTERN), swept=False)

#: Every kind of stored object (the sweep visits those with ``swept``).
NAMESPACES: tuple[Namespace, ...] = (INPUTS, RESULTS, PERSONAS)


class Storage:
    """The typed helpers over a backend (``objects``). A bad content hash, TaskUID or result name is a
    ValueError; a storage that cannot be reached or written raises OSError."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    # --- inputs ----------------------------------------------------------------------------------------------

    def put_input(self, sha: str, data: bytes) -> str:
        """Store an input image under its content hash (once; a re-upload starts its age again); its key."""
        key = INPUTS.key(sha)
        if not self.objects.touch(key):
            self.objects.put(key, data)
        return sha

    def has_input(self, sha: str) -> bool:
        """Whether an input of this content hash is stored (the gateway stores only inputs it has checked);
        False for anything that is not a content hash."""
        return INPUTS.is_name(sha) and self.objects.exists(INPUTS.key(sha))

    def open_input(self, sha: str) -> BinaryIO:
        """A stored input as a seekable binary stream (use it in a ``with`` block); FileNotFoundError if missing."""
        return self.objects.open(INPUTS.key(sha))

    # --- results ---------------------------------------------------------------------------------------------

    def write_result(self, uid: str, index: int | str, png: bytes) -> str:
        """Write result ``index`` (``<index>.png``) or a named result (:data:`AUTO_MASK_NAME`); its name."""
        name = index if isinstance(index, str) else f"{index}.png"
        self.objects.put(RESULTS.key(name, uid), png)
        return name

    def read_result(self, uid: str, name: str) -> bytes | None:
        """A result's bytes, or None if it is not stored (never written, or swept)."""
        return self.objects.get(RESULTS.key(name, uid))

    def result_link(self, uid: str, name: str, expires_at: int) -> str | None:
        """The URL a client downloads a result from until ``expires_at`` (a backend's presigned URL), or None:
        the gateway serves it at ``/results/{uid}/{name}`` (``app/resultlinks.py`` signs that link)."""
        return self.objects.link(RESULTS.key(name, uid), expires_at)

    def delete_results(self, uid: str) -> int:
        """Remove every result of a task; how many there were."""
        return self.objects.delete_group(RESULTS, RESULTS.check_group(uid))

    # --- personas (never swept) --------------------------------------------------------------------------------

    def put_persona_image(self, code: str, sha: str, data: bytes) -> str:
        """Store one image of persona ``code`` under its content hash; its name."""
        self.objects.put(PERSONAS.key(sha, code), data)
        return sha

    def open_persona_image(self, code: str, sha: str) -> BinaryIO:
        """One image of a persona as a seekable binary stream; FileNotFoundError if missing."""
        return self.objects.open(PERSONAS.key(sha, code))

    def persona_has(self, code: str, name: str) -> bool:
        """Whether object ``name`` (an image's content hash, or an embeddings file) of persona ``code`` is stored."""
        return self.objects.exists(PERSONAS.key(name, code))

    def write_persona_embeds(self, code: str, name: str, data: bytes) -> None:
        """Store a persona's cached embeddings (``name``: ``embeds-<32 hex>.safetensors``)."""
        self.objects.put(PERSONAS.key(name, code), data)

    def read_persona_embeds(self, code: str, name: str) -> bytes | None:
        """A persona's cached embeddings, or None when none were stored for that name."""
        return self.objects.get(PERSONAS.key(name, code))

    def delete_persona(self, code: str) -> int:
        """Remove every object of a persona (its images and cached embeddings); how many there were."""
        return self.objects.delete_group(PERSONAS, PERSONAS.check_group(code))

    # --- retention -------------------------------------------------------------------------------------------

    def sweep(self, retention_s: float, now: float | None = None) -> int:
        """Remove what was last written more than ``retention_s`` before ``now``: each expired input, each task
        whose newest result expired (all its results); returns how many inputs and tasks."""
        before = (time.time() if now is None else now) - retention_s
        removed = 0
        for ns in NAMESPACES:
            if not ns.swept:
                continue
            for entry in self.objects.expired(ns, before):
                if ns.grouped:
                    self.objects.delete_group(ns, entry)
                else:
                    self.objects.delete(ns.key(entry))
                removed += 1
        return removed


def open_storage(settings: Settings) -> Storage:
    """The deployment's storage, built the same way by the gateway and the workers: the bucket of
    ``ATELIER_STORAGE_URL`` (``s3://bucket/prefix``; with presigned result links when ``ATELIER_RESULT_LINKS``
    says so), else the data dir (``ATELIER_DATA_DIR``)."""
    if settings.storage_url:
        return Storage(S3Store.from_url(settings.storage_url, presign=settings.result_links == "presigned"))
    return Storage(LocalStore(settings.data_dir))
