"""Helpers of the browser tests (tests/browser/): Chromium driven by Playwright's sync API against the live stack,
a page wrapper that drives the playground (app/playground/) by its data-testid attributes and records what the
page did (console errors, failed and foreign requests, the API bodies it sent, screenshots of its states), and
the README screenshot (docs/playground.png).

Debian's Chromium is launched by path (never a downloaded browser): ``/usr/bin/chromium``, else ``chromium`` or
``chromium-browser`` on the PATH, else ``ATELIER_CHROMIUM``.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
README_SCREENSHOT = ROOT / "docs" / "playground.png"
README_SCREENSHOT_SIZE = (960, 600)     # the 1280x800 page, downscaled
README_SCREENSHOT_MAX_BYTES = 250_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str | None:
    """Debian's Chromium, or None when this machine has none."""
    for candidate in (os.environ.get("ATELIER_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch_args() -> list[str]:
    # Chromium refuses to start its sandbox as root (CI containers run as root)
    return ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


# --- images ------------------------------------------------------------------------------------------------

def decode_b64_image(text: str) -> Image.Image:
    """An image sent in a body (base64, with or without a data-URL prefix)."""
    if text.startswith("data:"):
        text = text.split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(text)))


def mask_of(img: Image.Image) -> np.ndarray:
    """A mask as the server reads it: luminance >= 128 (transparency put onto black) is garment."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return np.asarray(img.convert("L")) >= 128


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def fetch_image(url: str) -> tuple[Image.Image, bytes]:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, (url, r.status_code)
    return Image.open(io.BytesIO(r.content)), r.content


def dress_strokes(truth: np.ndarray, margin: int = 12, step: int = 8) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Horizontal strokes (image pixels) that cover the garment of ``truth`` row by row, ``margin`` pixels inside
    its left and right edges and its top and bottom: a person painting the dress with a big brush."""
    rows = np.nonzero(truth.any(axis=1))[0]
    strokes = []
    for y in range(int(rows.min()) + margin + 8, int(rows.max()) - margin + 1, step):
        xs = np.nonzero(truth[y])[0]
        if len(xs) and xs.max() - xs.min() > 2 * margin:
            strokes.append(((int(xs.min()) + margin, y), (int(xs.max()) - margin, y)))
    return strokes


# --- the page ----------------------------------------------------------------------------------------------

@dataclass
class Record:
    """What the page did."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)   # the API bodies it POSTed, in order

    def sent(self, action: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b.get("Action") == action]


class Playground:
    """One browser page of the playground, driven by data-testid."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.base_url))
        self.record = Record()
        self.shots: list[tuple[str, bytes]] = []
        self.fake_answers: dict[str, dict[str, Any]] = {}   # Action -> the answer its next call gets instead
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.record.console_errors.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.route("**/*", self._route)

    # the recording
    def _console(self, msg) -> None:
        self.record.console.append(f"{msg.type}: {msg.text}")
        if msg.type == "error":
            self.record.console_errors.append(msg.text)

    def _failed(self, request) -> None:
        failure = request.failure or ""
        if "ERR_ABORTED" in failure:   # a fetch or image cut short by a reload: not a failure of the page
            return
        self.record.failed_requests.append(f"{request.method} {request.url}: {failure}")

    def _route(self, route) -> None:
        """Every request the page makes: one to another origin is refused and recorded (the page must need
        none); the API bodies are recorded."""
        request = route.request
        url = request.url
        if not (url.startswith(self.origin + "/") or url == self.origin) and not url.startswith(("data:", "blob:")):
            self.record.foreign_requests.append(url)
            route.abort("blockedbyclient")
            return
        if request.method == "POST" and urlsplit(url).path == "/":
            body = json.loads(request.post_data or "{}")
            self.record.bodies.append(body)
            fake = self.fake_answers.pop(body.get("Action"), None)
            if fake is not None:
                route.fulfill(status=200, content_type="application/json", body=json.dumps(
                    {"Action": body["Action"], "request_uuid": body.get("request_uuid", ""), **fake}))
                return
        route.continue_()

    def answer_next(self, action: str, answer: dict[str, Any]) -> None:
        """The page's next call of ``action`` gets ``answer`` (RetCode, Message, ...) instead of the gateway's:
        for answers the real deployment cannot be made to give through the page's controls."""
        self.fake_answers[action] = answer

    def assert_clean(self) -> None:
        r = self.record
        assert not r.foreign_requests, f"requests to other origins: {r.foreign_requests}"
        assert not r.console_errors, f"console errors: {r.console_errors}"
        assert not r.failed_requests, f"failed requests: {r.failed_requests}"

    def snap(self, name: str) -> None:
        """Keep a screenshot of the current state (written out if the test fails)."""
        try:
            self.shots.append((name, self.page.screenshot(full_page=True)))
        except Exception as e:  # noqa: BLE001 - a screenshot must never fail a test
            self.record.console.append(f"screenshot {name} failed: {e}")

    def save_failure(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        self.snap("at-end")
        paths = []
        for i, (name, png) in enumerate(self.shots):
            path = folder / f"{i:02d}-{name}.png"
            path.write_bytes(png)
            paths.append(path)
        (folder / "console.txt").write_text("\n".join(self.record.console))
        (folder / "requests.json").write_text(json.dumps(
            [{k: (v if k not in ("ImageAndMaskList", "RawImage") else "...") for k, v in b.items()}
             for b in self.record.bodies], indent=1))
        return paths

    # controls
    def by(self, testid: str):
        return self.page.get_by_test_id(testid)

    def open(self) -> None:
        self.page.goto(self.base_url + "/")
        self.page.wait_for_load_state("load")

    def enter_keys(self, public_key: str, private_key: str) -> None:
        self.by("public-key").fill(public_key)
        self.by("private-key").fill(private_key)
        self.by("keys-save").click()

    def wait_connected(self) -> None:
        """The keys were accepted and the deployment's models are listed."""
        self.by("keys-status").wait_for(state="visible")
        self.wait_js("document.querySelector('[data-testid=main-model]').options.length > 1")

    def wait_js(self, expression: str, timeout_s: float = 30) -> None:
        """Wait until a JavaScript expression is true in the page. Polled from here: Playwright's own
        wait_for_function evaluates its predicate with eval() in the page, which the page's CSP refuses."""
        wait_until(lambda: self.page.evaluate(expression), timeout_s, expression)

    def set_range(self, testid: str, value: float) -> None:
        self.by(testid).evaluate(
            "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }", value)

    def load_mannequin(self, path: Path) -> None:
        self.by("mannequin-input").set_input_files(str(path))
        self.by("stage").wait_for(state="visible")
        self.wait_js("document.querySelector('[data-testid=mannequin-preview]').complete"
                     " && document.querySelector('[data-testid=mask-canvas]').width > 0")

    def drop_mannequin(self, path: Path) -> None:
        """Drag-and-drop a photo onto the drop zone (a drop event carrying the file, as a browser makes it)."""
        data = self.page.evaluate_handle(
            """([b64, name]) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const dt = new DataTransfer();
              dt.items.add(new File([bytes], name, { type: 'image/png' }));
              return dt;
            }""", [base64.b64encode(path.read_bytes()).decode(), path.name])
        self.by("dropzone").dispatch_event("dragover", {"dataTransfer": data})
        self.by("dropzone").dispatch_event("drop", {"dataTransfer": data})
        self.by("stage").wait_for(state="visible")
        self.wait_js("document.querySelector('[data-testid=mannequin-preview]').complete"
                     " && document.querySelector('[data-testid=mask-canvas]').width > 0")

    def garment_pixels_shown(self) -> int:
        """How many pixels of the mask canvas are garment (what the page shows, and would send)."""
        return self.by("mask-canvas").evaluate(
            "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) n++; return n; }")

    def mask_mode(self, mode: str) -> None:
        self.by(f"mode-{mode}").check()

    def image_to_page(self, x: float, y: float) -> tuple[float, float]:
        """The page position of the mannequin photo's pixel (x, y): its centre."""
        box = self.by("mask-canvas").bounding_box()
        w, h = self.by("mask-canvas").evaluate("c => [c.width, c.height]")
        return box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h

    def paint(self, strokes, brush: int = 20) -> None:
        """Mouse strokes on the mask canvas, each from one image point to another."""
        self.set_range("brush-size", brush)
        self.by("mask-canvas").scroll_into_view_if_needed()
        mouse = self.page.mouse
        for (x0, y0), (x1, y1) in strokes:
            mouse.move(*self.image_to_page(x0, y0))
            mouse.down()
            mouse.move(*self.image_to_page(x1, y1), steps=6)
            mouse.up()

    def click_image(self, x: int, y: int) -> None:
        # the whole photo in view first: a mouse click outside the viewport reaches nothing
        self.by("mask-canvas").evaluate("c => c.scrollIntoView({block: 'center'})")
        self.page.mouse.click(*self.image_to_page(x, y))

    def generate(self) -> None:
        self.by("generate").click()

    def wait_result(self, timeout_s: float = 150) -> str:
        """The URL of the first result image once it is shown (loaded) in the gallery."""
        img = self.by("result-image").first
        img.wait_for(state="visible", timeout=timeout_s * 1000)
        self.wait_js("document.querySelector('[data-testid=result-image]').naturalWidth > 0", timeout_s)
        return img.evaluate("img => img.src")

    def task_status(self, uid: str) -> str:
        return self.page.locator(f'[data-testid=task][data-uid="{uid}"] [data-testid=task-status]').inner_text()


def wait_until(predicate, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout_s}s")


# --- the README screenshot ---------------------------------------------------------------------------------

def save_readme_screenshot(ui: Playground, path: Path = README_SCREENSHOT) -> int:
    """The page as it is (1280x800, scrolled to the top), downscaled and palette-quantised into a small PNG;
    returns its size in bytes."""
    ui.page.evaluate("window.scrollTo(0, 0)")
    shot = Image.open(io.BytesIO(ui.page.screenshot()))
    small = shot.convert("RGB").resize(README_SCREENSHOT_SIZE, Image.Resampling.LANCZOS)
    small = small.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, format="PNG", optimize=True)
    return path.stat().st_size
