"""``atelier``: a command-line client of the PICPIK protocol (any compatible server).

    atelier generate --mannequin M.png --clothes-mask K.png [--background B.png] --prompt "..." -o DIR
    atelier models
    atelier cancel TASKUID [TASKUID ...]

The key pair comes from --public-key/--private-key, else ATELIER_PUBLIC_KEY/ATELIER_PRIVATE_KEY,
else the dev key pair that ``make run`` created under ATELIER_DATA_DIR (default ./var). The server
from --url, else ATELIER_URL, else http://127.0.0.1:8000.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.contract.jobs import ENDED_STATUSES, TaskStatus
from app.contract.limits import DEFAULT_REFER_STRENGTH, DEFAULT_RESIZE_MODE, LIST_MODELS_FIELDS, RESIZE_MODES
from app.keys import KeyStore, dev_keys_path
from app.signature import sign

console = Console(stderr=True)


class ClientError(Exception):
    pass


def _keys(args: argparse.Namespace) -> tuple[str, str]:
    pub = args.public_key or os.environ.get("ATELIER_PUBLIC_KEY")
    priv = args.private_key or os.environ.get("ATELIER_PRIVATE_KEY")
    if pub and priv:
        return pub, priv
    path = dev_keys_path(Path(os.environ.get("ATELIER_DATA_DIR", "var")))
    if path.exists():
        pair = KeyStore.from_file(path).only_pair()
        return pair.public_key, pair.private_key
    raise ClientError("no key pair: pass --public-key/--private-key or set ATELIER_PUBLIC_KEY/ATELIER_PRIVATE_KEY")


def call(url: str, public_key: str, private_key: str, action: str, **params: Any) -> dict[str, Any]:
    body = {"Action": action, "PublicKey": public_key, "request_uuid": str(uuid.uuid4()), **params}
    body["Signature"] = sign(body, private_key)
    r = httpx.post(url.rstrip("/") + "/", json=body, timeout=120)
    r.raise_for_status()
    answer = r.json()
    if answer.get("RetCode") != 0:
        raise ClientError(f"{action} failed: RetCode {answer.get('RetCode')}: {answer.get('Message')}")
    return answer


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _model_ref(text: str, param: str) -> dict[str, Any]:
    """``CODE`` or ``CODE:VALUE`` -> a Model object (VALUE goes to InferenceParams[param])."""
    code, _, value = text.partition(":")
    ref: dict[str, Any] = {"ModelCode": code}
    if value:
        ref["InferenceParams"] = {param: float(value)}
    return ref


def _control_unit(text: str) -> dict[str, Any]:
    """``PREPROCESSOR,CONTROLMODEL[:WEIGHT]`` (PREPROCESSOR may be empty) -> a ControlNet unit."""
    pre, _, cm = text.partition(",")
    if not cm:
        raise ClientError(f"--control {text!r}: expected PREPROCESSOR,CONTROLMODEL[:WEIGHT]")
    unit: dict[str, Any] = {"ControlModel": _model_ref(cm, "ControlWeight")}
    if pre:
        unit["PreProcessor"] = {"ModelCode": pre}
    return unit


def cmd_generate(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    images = [_b64(args.mannequin), _b64(args.clothes_mask)]
    params: dict[str, Any] = {
        "MainModel": {"ModelCode": args.model},
        "PositivePrompts": args.prompt, "NegativePrompts": args.negative_prompt or [],
        "Seed": args.seed, "Width": args.width, "Height": args.height, "BatchSize": args.batch_size,
        "ImageAndMaskList": images,
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1, "ResizeMode": args.resize_mode,
                      "InvertMask": args.invert_mask},
    }
    if args.background:
        images.append(_b64(args.background))
        params["Image2Image"] = {"ImageIndex": 2, "ReferStrength": args.refer_strength}
    if args.sub_model:
        params["SubModelList"] = [_model_ref(s, "LoraWeight") for s in args.sub_model]
    if args.control is not None:
        params["ControlNetList"] = [_control_unit(c) for c in args.control if c]
    if args.no_translate:
        params["TranslatePrompts"] = False
    uid = call(args.url, pub, priv, "GenerateFromMannequin", **params)["TaskUID"]
    console.print(f"task [bold]{uid}[/bold] submitted")
    detail: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console) as bar:
        t = bar.add_task(TaskStatus.QUEUING, total=100)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            details = call(args.url, pub, priv, "ListTasksDetails", TaskUIDList=[uid])["TaskDetailList"]
            detail = details[0] if details else {}
            status = detail.get("Status", "?")
            bar.update(t, description=status, completed=detail.get("Progress", 0))
            if status in ENDED_STATUSES:
                break
            time.sleep(args.poll)
    if detail.get("Status") == TaskStatus.CANCELED:
        raise ClientError(f"task {uid} was canceled")
    if detail.get("Status") != TaskStatus.FINISHED:
        raise ClientError(f"task {uid} did not finish: {detail.get('Status', 'timeout')} "
                          f"{detail.get('ErrorCode', '')} {detail.get('ErrorMessage', '')}".strip())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, link in enumerate(detail["ImgList"]):
        r = httpx.get(link, timeout=60)
        r.raise_for_status()
        path = out / f"{uid}_{i}.png"
        path.write_bytes(r.content)
        print(path)
    for note in detail.get("Notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    console.print(f"seed {detail.get('Seed')}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    details = call(args.url, pub, priv, "CancelTask", TaskUIDList=args.task_uid)["TaskDetailList"]
    found = {d["TaskUID"]: d["Status"] for d in details}
    for uid in args.task_uid:
        print(f"{uid} {found.get(uid, 'not found (or not yours)')}")
    return 0 if len(found) == len(set(args.task_uid)) else 1


def cmd_models(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    models = call(args.url, pub, priv, "ListModels")
    control = call(args.url, pub, priv, "ListControlNets")
    rows = [(m, model_type) for model_type, field in LIST_MODELS_FIELDS.items() for m in models.get(field, [])]
    rows += [(m, "PreProcessor") for m in control["PreProcessors"]]
    rows += [(m, "ControlModel") for m in control["ControlModels"]]
    for m, model_type in rows:
        words = f"  trigger: {', '.join(m['TriggerWordList'])}" if m.get("TriggerWordList") else ""
        print(f"{m['ModelCode']:<22} {model_type:<13} {m.get('Name', '')}{words}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atelier", description="Client of a PICPIK-compatible Atelier server")
    ap.add_argument("--url", default=os.environ.get("ATELIER_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--public-key")
    ap.add_argument("--private-key")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="mannequin photo -> fashion model photo(s)")
    g.add_argument("--mannequin", required=True)
    g.add_argument("--clothes-mask", required=True, help="white = clothes, kept exactly")
    g.add_argument("--background", help="background reference image (Image2Image)")
    g.add_argument("--refer-strength", type=float, default=DEFAULT_REFER_STRENGTH)
    g.add_argument("--prompt", action="append", required=True, help="repeatable")
    g.add_argument("--negative-prompt", action="append")
    g.add_argument("--model", default="demo-inpaint", help="MainModel ModelCode (see `atelier models`)")
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--height", type=int, default=768)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--seed", type=int, default=-1)
    g.add_argument("--resize-mode", default=DEFAULT_RESIZE_MODE, choices=RESIZE_MODES)
    g.add_argument("--invert-mask", action="store_true")
    g.add_argument("--sub-model", action="append", metavar="CODE[:WEIGHT]",
                   help="LoRA / Embedding / HyperNetwork from `atelier models` (repeatable)")
    g.add_argument("--control", action="append", metavar="PRE,MODEL[:WEIGHT]",
                   help="a ControlNet unit, e.g. canny,demo-controlnet:0.8 (repeatable); "
                        "--control '' switches a model's default control off")
    g.add_argument("--no-translate", action="store_true", help="TranslatePrompts false")
    g.add_argument("--poll", type=float, default=0.5, help="seconds between status polls")
    g.add_argument("--timeout", type=float, default=1800)
    g.add_argument("-o", "--output", required=True, help="folder for the images")
    g.set_defaults(func=cmd_generate)
    sub.add_parser("models", help="list the server's models").set_defaults(func=cmd_models)
    c = sub.add_parser("cancel", help="cancel tasks (CancelTask): queued ones never run, running ones stop")
    c.add_argument("task_uid", nargs="+")
    c.set_defaults(func=cmd_cancel)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ClientError, httpx.HTTPError, OSError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
