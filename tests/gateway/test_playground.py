"""The gateway's side of the browser playground: where it is served, with which headers, and that it serves
nothing but its own static files (the page itself is tested in a real browser: tests/browser/)."""
from __future__ import annotations

import re

from app.main import PLAYGROUND_DIR, PLAYGROUND_HEADERS


def test_the_root_leads_to_the_playground(api):
    r = api.client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/playground/"


def test_every_playground_file_is_served_with_the_strict_headers(api):
    files = [p for p in PLAYGROUND_DIR.rglob("*") if p.is_file()]
    assert any(p.name == "index.html" for p in files)
    for path in files:
        rel = path.relative_to(PLAYGROUND_DIR).as_posix()
        r = api.client.get(f"/playground/{rel}")
        assert r.status_code == 200, rel
        assert r.content == path.read_bytes()
        for name, value in PLAYGROUND_HEADERS.items():
            assert r.headers[name] == value, (rel, name)
        if rel.endswith(".js"):
            assert "javascript" in r.headers["content-type"]
    csp = PLAYGROUND_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "connect-src 'self'" in csp
    index = api.client.get("/playground/")
    assert index.status_code == 200 and index.content == (PLAYGROUND_DIR / "index.html").read_bytes()


def test_nothing_outside_the_playground_folder_is_served(api):
    # percent-encoded, so that the client sends the dots as they are and the static files' own guard is what refuses
    for path in ("/playground/%2e%2e/main.py", "/playground/%2e%2e/%2e%2e/var/dev-keys.yaml",
                 "/playground/%2e%2e/%2e%2e/pyproject.toml", "/playground/nope.js"):
        r = api.client.get(path)
        assert r.status_code == 404, path
        assert b"PrivateKey" not in r.content


def test_the_page_holds_no_inline_script_or_style():
    """The CSP would block them anyway; this says which file to fix."""
    for page in PLAYGROUND_DIR.rglob("*.html"):
        html = page.read_text()
        for tag in re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S | re.I):
            assert not tag.strip(), f"{page.name}: inline script"
        assert all("src=" in t for t in re.findall(r"<script\b[^>]*>", html, flags=re.I)), page.name
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), f"{page.name}: inline event handler"
        assert not re.search(r"\sstyle\s*=", html, flags=re.I), f"{page.name}: inline style"
