"""Headless Chromium (Debian's package) for tests that look at a page as a browser does.

:func:`dump_dom` loads a local file (no network) and returns the DOM Chromium built from it (``--dump-dom``): what it parsed and would render, not the bytes we
wrote. Every run gets a fresh profile directory, removed afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise AssertionError("chromium is not installed: scripts/setup.sh installs it")
    return found


def dump_dom(page: Path, *, timeout: float = 60) -> str:
    """The DOM of ``page`` (a local file) as Chromium serialises it."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        r = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if r.returncode != 0 or "<body" not in r.stdout:
        raise AssertionError(f"chromium failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


class _Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str | None] = []
        self.texts: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        ident = dict(attrs).get("id")
        self.stack.append(ident)
        if ident is not None:
            self.texts.setdefault(ident, [])

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for ident in self.stack:
            if ident is not None:
                self.texts[ident].append(data)


def texts_by_id(dom: str) -> dict[str, str]:
    """The text inside each element that has an id (whitespace collapsed)."""
    parser = _Texts()
    parser.feed(dom)
    return {k: " ".join(" ".join(v).split()) for k, v in parser.texts.items()}
