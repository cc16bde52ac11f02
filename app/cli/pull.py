"""``atelier pull``: download the models a models config names on the Hugging Face hub, and write the models config
that serves them from local files.

    atelier pull [--config F] [--dest DIR] [--output FILE] [--only NAME ...] [--dry-run]

``--config`` (default ``models_config/recommended.yaml``) is a models config (models_config/README.md) whose ``hub:``
sources say what to fetch. Each repo goes into its own folder under ``--dest`` (default ``./models``):
``<owner>/<name>``, with ``@<revision>`` appended when the source names one. ``--output`` (default
``<dest>/models.yaml``) is then written: the same config, each hub source replaced by the local ``path:`` (a folder)
or ``file:`` (a ``filename:`` source) it became, relative to the output's folder, every other relative path made
absolute. That config is validated as a served one (:class:`~app.contract.registry.Registry`) before anything is
downloaded, and again once written. ``--only`` pulls some entries (by ModelCode, or ``translator``,
``vaes.<family>``): the output holds them, the entries their ``default_control`` names, and every entry that needs
no download.

Which files of a repo (:func:`select_files`):

* ``filename: F``: that file;
* ``files: [patterns]``: the files matching any of the glob patterns (``fnmatch``: ``*`` matches ``/`` too), each
  pattern matching at least one;
* neither, and a diffusers pipeline (``model_index.json`` at the root): ``model_index.json`` and the folder of each
  component it lists, except a checkpoint's own ``safety_checker`` (and the ``feature_extractor`` that only feeds
  it), which a worker never loads (models_config/README.md "Safety"); in each folder its config files and weights;
* neither, any other repo: the config files and weights at its root (a diffusers ControlNet or VAE, a transformers
  model, a MarianMT folder).

Config files are ``*.json``, ``*.txt``, ``*.model``, ``*.spm``; weights are ``diffusion_pytorch_model``, ``model``
or ``pytorch_model`` (or their shards and index), ``.safetensors`` rather than ``.bin``. With ``variant: V``,
``<name>.V.<ext>`` is taken rather than ``<name>.<ext>`` where the repo has it (unsharded), and stored as
``<name>.<ext>``: the folder is a plain one that every loader reads without being told the variant.

Files already complete are not downloaded again: a state file in each repo folder (``.atelier-pull.json``) records
what was verified (hash, size, modification time); a file it does not vouch for is hashed again. Transfers,
resumption and verification: :mod:`app.cli.hub`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import fnmatch
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from app.cli.hub import PART_SUFFIX, Hub, HubError, Listing, RemoteFile, file_matches
from app.contract.registry import ModelSource, Registry
from app.contract.settings import PROJECT_ROOT

RECOMMENDED_CONFIG = PROJECT_ROOT / "models_config" / "recommended.yaml"
DEFAULT_DEST = Path("models")
OUTPUT_NAME = "models.yaml"
STATE_FILE = ".atelier-pull.json"
#: Held (flock) by the pull writing into a --dest: a second one at the same time is refused.
LOCK_FILE = ".atelier-pull.lock"
CONFIG_SUFFIXES = (".json", ".txt", ".model", ".spm")
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # in this order of preference
WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")
#: Pipeline components a worker never loads (workers/models/loading.py ``without_safety_checker``).
NEVER_PULLED = ("safety_checker",)
#: Room kept free on the destination's disk beyond the bytes to download.
SPACE_MARGIN_BYTES = 256 * 1024**2

_NAMES = "|".join(WEIGHT_NAMES)
_WEIGHT = re.compile(rf"(?P<name>{_NAMES})(?:\.(?P<variant>[A-Za-z0-9_-]+))?(?P<shard>-\d+-of-\d+)?"
                     r"(?P<ext>\.safetensors|\.bin)")
_INDEX = re.compile(rf"(?P<name>{_NAMES})(?P<ext>\.safetensors|\.bin)\.index(?:\.(?P<variant>[A-Za-z0-9_-]+))?\.json")


class PullError(Exception):
    """A pull that cannot go on, told in one line."""


@dataclass(frozen=True)
class HubSource:
    """One hub source of the config: where it is (``models[3] (ModelCode 'x')``, ``translator``, ``vaes.sdxl``),
    the name ``--only`` knows it by (its ModelCode, ``translator``, ``vaes.sdxl``) and the source."""

    label: str
    name: str
    source: ModelSource


@dataclass
class RepoPlan:
    """What one repo (at one revision) gives: its listing and the files to store, by path under its folder."""

    repo: str
    revision: str | None
    folder: PurePosixPath
    names: list[str] = field(default_factory=list)
    listing: Listing | None = None
    files: dict[str, RemoteFile] = field(default_factory=dict)


# --- the config ------------------------------------------------------------------------------------------


def repo_folder(source: ModelSource) -> PurePosixPath:
    """The folder, under ``--dest``, of a hub source's repo: ``owner/name`` (``owner/name@revision``)."""
    owner, name = source.hub.split("/")
    if source.revision is not None:
        name += "@" + re.sub(r"[^A-Za-z0-9._-]", "_", source.revision)
    return PurePosixPath(owner, name)


def pulled_path(source: ModelSource) -> tuple[str, PurePosixPath]:
    """``("file", folder/filename)`` or ``("path", folder)``: the local source a hub source becomes (under --dest)."""
    folder = repo_folder(source)
    return ("file", folder / source.filename) if source.filename is not None else ("path", folder)


def _source_error(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'source'}: {err['msg'].removeprefix('Value error, ')}"
                     for err in e.errors())


def _raw_sources(doc: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(label, name, raw source) of every source of a models config, entries first."""
    found = []
    for i, raw in enumerate(doc.get("models") or []):
        if isinstance(raw, dict):
            code = raw.get("ModelCode")
            label = f"models[{i}]" + (f" (ModelCode {code!r})" if code else "")
            found.append((label, str(code), raw.get("source")))
            translators = raw.get("translators")  # a Describer's, per language (pulled with their entry)
            for lang, source in translators.items() if isinstance(translators, dict) else ():
                found.append((f"{label}: translators.{lang}", str(code), source))
    for family, raw in (doc.get("vaes") or {}).items() if isinstance(doc.get("vaes"), dict) else ():
        found.append((f"vaes.{family}", f"vaes.{family}", raw))
    found.append(("translator", "translator", doc.get("translator")))
    return found


def hub_sources(doc: dict[str, Any], origin: str) -> list[HubSource]:
    """The hub sources of a parsed models config, each validated (a bad one: :class:`PullError` naming it)."""
    found = []
    for label, name, raw in _raw_sources(doc):
        if isinstance(raw, dict) and raw.get("hub") is not None:
            try:
                found.append(HubSource(label, name, ModelSource.model_validate(raw)))
            except ValidationError as e:
                raise PullError(f"{origin}: {label}: source: {_source_error(e)}") from None
    return found


def read_config(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise PullError(f"cannot read the models config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise PullError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise PullError(f"{path}: expected a mapping with `models:`")
    return doc


def only(doc: dict[str, Any], names: list[str], origin: str) -> dict[str, Any]:
    """The config restricted to the hub sources ``names`` (plus what their ``default_control`` names, and every
    entry that needs no download)."""
    known = {name for _, name, raw in _raw_sources(doc) if raw is not None}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PullError(f"--only {' '.join(unknown)}: not in {origin}, whose names are {', '.join(sorted(known))}")
    wanted = set(names)
    models = [m for m in doc.get("models") or [] if isinstance(m, dict)]
    for m in models:
        if m.get("ModelCode") in wanted:
            for unit in m.get("default_control") or []:
                wanted.update(unit.get(k) for k in ("PreProcessor", "ControlModel") if isinstance(unit, dict))

    def kept(name: str, raw: Any) -> bool:
        return name in wanted or not (isinstance(raw, dict) and raw.get("hub") is not None)

    out = dict(doc)
    def translators_kept(m: dict[str, Any]) -> bool:
        ts = m.get("translators")
        return all(kept(str(m.get("ModelCode")), t) for t in (ts.values() if isinstance(ts, dict) else ()))

    out["models"] = [m for m in models if kept(str(m.get("ModelCode")), m.get("source")) and translators_kept(m)]
    if isinstance(doc.get("vaes"), dict):
        out["vaes"] = {f: s for f, s in doc["vaes"].items() if kept(f"vaes.{f}", s)}
    if doc.get("translator") is not None and not kept("translator", doc["translator"]):
        out.pop("translator")
    return out


def pulled_config(doc: dict[str, Any], config: Path, dest: Path, output: Path) -> dict[str, Any]:
    """The config to write at ``output``: hub sources replaced by what they become under ``dest`` (relative to the
    output's folder), every other relative path (``path``, ``file``, ``config``, ``safety.checker``) made absolute
    against the config's folder."""
    base_in = config.parent.resolve()

    def absolute(value: Any) -> str:
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (base_in / p).resolve())

    def rewrite(raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        if raw.get("hub") is not None:
            kind, rel = pulled_path(ModelSource.model_validate(raw))
            return {kind: os.path.relpath(dest / rel, output.parent)}
        return {k: absolute(v) if k in ("path", "file", "config") and v is not None else v for k, v in raw.items()}

    out = copy.deepcopy(doc)
    for entry in out.get("models") or []:
        if isinstance(entry, dict):
            if "source" in entry:
                entry["source"] = rewrite(entry["source"])
            if isinstance(entry.get("translators"), dict):
                entry["translators"] = {lang: rewrite(t) for lang, t in entry["translators"].items()}
            safety = entry.get("safety")
            if isinstance(safety, dict) and safety.get("checker") is not None:
                safety["checker"] = absolute(safety["checker"])
    if isinstance(out.get("vaes"), dict):
        out["vaes"] = {f: rewrite(s) for f, s in out["vaes"].items()}
    if out.get("translator") is not None:
        out["translator"] = rewrite(out["translator"])
    return out


def validate_pulled(doc: dict[str, Any], output: Path, origin: str) -> None:
    """Refuse (:class:`PullError`) a pulled config that a deployment would refuse."""
    try:
        Registry.from_dict(doc, output.parent, origin=origin)
    except ValueError as e:
        raise PullError(f"{e} (pulled, a hub source with `filename:` becomes a `file:`, any other a `path:` folder)"
                        ) from None


# --- which files -----------------------------------------------------------------------------------------


def _weights(names: dict[str, RemoteFile], variant: str | None) -> dict[str, str]:
    """Stored name -> name in the folder, of the weights to take among a folder's files (see the module doc)."""
    parsed = [(n, m) for n in names if (m := _WEIGHT.fullmatch(n))]
    for ext in WEIGHT_SUFFIXES:
        if variant is not None:
            singles = {f"{m['name']}{ext}": n for n, m in parsed
                       if m["ext"] == ext and m["variant"] == variant and not m["shard"]}
            if singles:
                return singles
        plain = {n: n for n, m in parsed if m["ext"] == ext and m["variant"] is None}
        if plain:
            for n, m in parsed:
                index = f"{m['name']}{ext}.index.json"
                if n in plain and m["shard"] and index in names:
                    plain[index] = index
            return plain
    return {}


def _folder_files(files: dict[str, RemoteFile], folder: str, variant: str | None) -> tuple[dict[str, RemoteFile], bool]:
    """The config files and weights directly in ``folder`` of a repo ("" = its root), by stored path; and whether
    weights were found."""
    prefix = f"{folder}/" if folder else ""
    names = {p[len(prefix):]: r for p, r in files.items() if p.startswith(prefix) and "/" not in p[len(prefix):]}
    out = {prefix + n: r for n, r in names.items() if n.endswith(CONFIG_SUFFIXES) and not _INDEX.fullmatch(n)}
    weights = _weights(names, variant)
    out.update({prefix + stored: names[n] for stored, n in weights.items()})
    return out, bool(weights)


def _stored_as(chosen: dict[str, RemoteFile], variant: str | None) -> dict[str, RemoteFile]:
    """Files chosen by pattern, by stored path: ``<name>.<variant>.<ext>`` as ``<name>.<ext>`` (replacing the plain
    file of that name)."""
    out: dict[str, RemoteFile] = {}
    renamed: dict[str, RemoteFile] = {}
    for path, remote in chosen.items():
        folder, _, name = path.rpartition("/")
        m = _WEIGHT.fullmatch(name)
        if variant is not None and m and m["variant"] == variant and not m["shard"]:
            renamed[(folder + "/" if folder else "") + m["name"] + m["ext"]] = remote
        else:
            out[path] = remote
    return out | renamed


def select_files(listing: Listing, source: ModelSource, read: Callable[[RemoteFile], bytes]) -> dict[str, RemoteFile]:
    """The files of ``listing`` that ``source`` means, by the path they are stored at under the repo's folder
    (module doc). ``read`` gives a small file's content (a pipeline's ``model_index.json``). Raises
    :class:`PullError` when a named file or pattern matches nothing, or no weights are found."""
    files, where = listing.files, f"hub repo {listing.repo} (commit {listing.commit[:12]})"
    if source.filename is not None:
        if source.filename not in files:
            raise PullError(f"{where} has no file {source.filename}")
        return {source.filename: files[source.filename]}
    if source.files is not None:
        chosen: dict[str, RemoteFile] = {}
        for pattern in source.files:
            hits = {p: r for p, r in files.items() if fnmatch.fnmatchcase(p, pattern)}
            if not hits:
                raise PullError(f"files: {pattern!r} matches no file of {where}")
            chosen |= hits
        return _stored_as(chosen, source.variant)
    if "model_index.json" in files:
        try:
            index = json.loads(read(files["model_index.json"]))
        except ValueError:
            raise PullError(f"{where}: model_index.json is not JSON") from None
        components = {k for k, v in index.items()
                      if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and all(v)}
        skipped = set(NEVER_PULLED) | ({"feature_extractor"} if "safety_checker" in components else set())
        chosen = {"model_index.json": files["model_index.json"]}
        for component in sorted(components - skipped):
            chosen |= _folder_files(files, component, source.variant)[0]
        return chosen
    chosen, has_weights = _folder_files(files, "", source.variant)
    if not has_weights:
        raise PullError(f"found no weights at the root of {where} ({', '.join(WEIGHT_NAMES)} as .safetensors or"
                        " .bin): name its files with `files:` or `filename:`")
    return chosen


# --- planning --------------------------------------------------------------------------------------------


def _state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        return state if isinstance(state, dict) and isinstance(state.get("files"), dict) else {"files": {}}
    except (OSError, ValueError):
        return {"files": {}}


def _save_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, folder / STATE_FILE)


def _vouched(target: Path, remote: RemoteFile, record: Any) -> bool:
    """Whether the state file's record says ``target`` is ``remote``'s content, verified, and unchanged since."""
    try:
        st = target.stat()
    except OSError:
        return False
    return st.st_size == remote.size and record == {"check": remote.check, "size": st.st_size,
                                                    "mtime_ns": st.st_mtime_ns}


def _record(target: Path, remote: RemoteFile) -> dict[str, Any]:
    st = target.stat()
    return {"check": remote.check, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def plan_repos(sources: list[HubSource], hub: Hub, dest: Path) -> list[RepoPlan]:
    """List each repo once (sources of one repo and revision share its folder) and choose its files. Raises
    :class:`PullError` (or :class:`HubError`)."""
    plans: dict[tuple[str, str | None], RepoPlan] = {}
    for s in sources:
        key = (s.source.hub, s.source.revision)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = RepoPlan(s.source.hub, s.source.revision, repo_folder(s.source))
            plan.listing = hub.listing(s.source.hub, s.source.revision)
        plan.names.append(s.name)
        folder = dest / plan.folder

        def read(remote: RemoteFile, folder: Path = folder, listing: Listing = plan.listing) -> bytes:
            local = folder / remote.path
            if file_matches(local, remote):  # small files only: a pipeline's model_index.json
                return local.read_bytes()
            return hub.read(listing, remote)

        for stored, remote in select_files(plan.listing, s.source, read).items():
            other = plan.files.setdefault(stored, remote)
            if other != remote:
                raise PullError(f"{s.label}: hub repo {plan.repo} would store both {other.path} and {remote.path} as"
                                f" {stored}: give the sources of one repo the same `variant:`")
    return list(plans.values())


# --- the command -------------------------------------------------------------------------------------------


def _free_space(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@contextlib.contextmanager
def _only_pull_into(dest: Path) -> Iterator[None]:
    """Hold ``dest``'s lock file for the block; :class:`PullError` when another pull holds it (two pulls writing the
    same ``.part`` files would corrupt each other's downloads)."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullError(f"another atelier pull is writing into {dest}: wait until it ends") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _header(config: Path, dest: Path, output: Path, plans: list[RepoPlan]) -> str:
    """The comment heading a written config: where it comes from, how to serve it, which commit each folder holds."""
    lines = [f"Written by `atelier pull` from {config} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: the same models,",
             "read from local files. Edit that config and pull again rather than this file (files already here are",
             "not downloaded again). Licences: the comments of that config; check them before commercial use.",
             f"Serve it: ATELIER_MODELS_CONFIG={output} make run",
             "Folders (relative to this file) <- hub repo @ commit:"]
    lines += [f"  {os.path.relpath(dest / p.folder, output.parent)} <- {p.repo} @ {p.listing.commit}" for p in plans]
    return "".join(f"# {line}\n" for line in lines)


def pull(config: Path, dest: Path, output: Path | None = None, names: list[str] | None = None, *,
         dry_run: bool = False, console: Console | None = None, hub: Hub | None = None) -> int:
    """Pull what ``config`` names into ``dest`` and write ``output`` (module doc). Returns the exit code (0);
    raises :class:`PullError` or :class:`HubError`."""
    console = console or Console(stderr=True, soft_wrap=True)
    config, dest = Path(config).expanduser().absolute(), Path(dest).expanduser().absolute()
    output = Path(output).expanduser().absolute() if output is not None else dest / OUTPUT_NAME
    origin = str(config)
    doc = read_config(config)
    hub_sources(doc, origin)                                               # each hub source well formed
    validate_pulled(pulled_config(doc, config, dest, output), output, origin)  # the whole config served once pulled
    if names:
        doc = only(doc, names, origin)
    sources = hub_sources(doc, origin)
    pulled = pulled_config(doc, config, dest, output)
    validate_pulled(pulled, output, origin)
    if not sources:
        raise PullError(f"{origin} names no hub source: nothing to pull")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PullError("HF_HUB_OFFLINE is set: nothing can be downloaded (unset it to pull)")
    own_hub = hub is None
    hub = hub or Hub()
    try:
        plans = plan_repos(sources, hub, dest)
        return _fetch(plans, hub, config, dest, output, pulled, console, dry_run)
    finally:
        if own_hub:
            hub.close()


def _fetch(plans: list[RepoPlan], hub: Hub, config: Path, dest: Path, output: Path, pulled: dict[str, Any],
           console: Console, dry_run: bool) -> int:
    """Show the plan, download what is missing, write the state files and the output config."""
    todo: list[tuple[RepoPlan, str, RemoteFile, Path]] = []
    states: dict[str, dict[str, Any]] = {}
    complete = held = 0
    console.print(f"atelier pull: {len(plans)} hub repo(s) of {config} from {hub.endpoint} into {dest}")
    for plan in plans:
        folder = dest / plan.folder
        state = states[str(plan.folder)] = _state(folder)
        size = sum(r.size for r in plan.files.values())
        console.print(f"  {plan.repo} @ {plan.listing.commit[:12]}: {len(plan.files)} files, {decimal(size)}"
                      f" ({', '.join(plan.names)})")
        for stored, remote in sorted(plan.files.items()):
            target = folder / stored
            if _vouched(target, remote, state["files"].get(stored)):
                complete += 1
            else:
                todo.append((plan, stored, remote, target))
                part = target.with_name(target.name + PART_SUFFIX)
                held += min(part.stat().st_size, remote.size) if part.exists() else 0
    needed = sum(r.size for _, _, r, _ in todo)
    console.print(f"  to download: {decimal(needed - held)} in {len(todo)} file(s)"
                  + (f" ({decimal(held)} of them already in .part files)" if held else "")
                  + f"; {complete} file(s) already complete")
    if dry_run:
        return 0
    free = _free_space(dest)
    if needed - held + SPACE_MARGIN_BYTES > free:
        raise PullError(f"{dest} has {decimal(free)} free; the pull needs {decimal(needed - held)}: free some space"
                        " or choose another --dest")
    transferred = 0
    with _only_pull_into(dest), Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                         TransferSpeedColumn(), TimeRemainingColumn(), console=console) as bar:
        states = {folder: _state(dest / folder) for folder in states}  # what a pull that ended meanwhile recorded
        total, finished = bar.add_task("all files", total=needed), 0  # finished: bytes of the files done
        for plan, stored, remote, target in todo:
            state = states[str(plan.folder)]
            if file_matches(target, remote):  # complete, but not vouched for (no state file, or touched since)
                verified = f"already here, {remote.check_name} verified"
            else:
                task = bar.add_task(escape(f"{plan.repo}/{stored}"), total=remote.size)

                def progress(done: int, task: int = task, base: int = finished) -> None:
                    bar.update(task, completed=done)
                    bar.update(total, completed=base + done)

                resumed = target.with_name(target.name + PART_SUFFIX)
                at = resumed.stat().st_size if resumed.exists() else 0
                transferred += hub.download(plan.listing, remote, target, progress)
                bar.remove_task(task)
                verified = f"{remote.check_name} verified" + (f", resumed at {decimal(at)}" if at else "")
            finished += remote.size
            bar.update(total, completed=finished)
            state["files"][stored] = _record(target, remote)
            state.update(repo=plan.repo, revision=plan.revision, commit=plan.listing.commit)
            _save_state(dest / plan.folder, state)
            console.print(f"  ok {escape(plan.repo)}/{escape(stored)} ({decimal(remote.size)}, {verified})")
    for plan in plans:  # repos whose files were all complete get their state (and commit) recorded too
        state = states[str(plan.folder)]
        if state.get("commit") != plan.listing.commit and (dest / plan.folder).is_dir():
            state.update(repo=plan.repo, revision=plan.revision, commit=plan.listing.commit)
            _save_state(dest / plan.folder, state)
    _write(output, _header(config, dest, output, plans) + yaml.safe_dump(pulled, sort_keys=False, allow_unicode=True,
                                                                 width=120))
    try:
        Registry.from_file(output)
    except ValueError as e:
        raise PullError(f"the written config does not validate: {e}") from None
    console.print(f"pulled {len(todo)} file(s) ({decimal(transferred)} downloaded), {complete} already complete;"
                  f" wrote {output}")
    console.print(f"serve them: ATELIER_MODELS_CONFIG={_shown(output)} make run")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_parser(sub: Any) -> None:
    """``atelier pull``'s arguments, on the ``atelier`` command's subparsers."""
    p = sub.add_parser("pull", help="download the real models of a models config from the Hugging Face hub"
                       " (HF_ENDPOINT) and write the models config that serves them")
    p.add_argument("--config", type=Path, default=RECOMMENDED_CONFIG,
                   help="the models config whose hub sources to pull (default models_config/recommended.yaml)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where the files go, one folder per repo"
                   " (default ./models)")
    p.add_argument("--output", type=Path, help="the models config to write (default DEST/models.yaml)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="pull these entries only (ModelCode, translator,"
                   " vaes.sd15, vaes.sdxl)")
    p.add_argument("--dry-run", action="store_true", help="list what would be downloaded, download nothing")
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    """``atelier pull``: one line on any failure (exit 1), 130 when interrupted (partial files kept)."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        return pull(args.config, args.dest, args.output, args.only, dry_run=args.dry_run, console=console)
    except (PullError, HubError) as e:
        console.print(f"[red]atelier pull:[/red] {escape(str(e))}")
    except OSError as e:
        console.print(f"[red]atelier pull:[/red] {escape(str(e))}")
    except KeyboardInterrupt:
        console.print("atelier pull: interrupted; unfinished files are kept as *.part: run it again to resume")
        return 130
    return 1
