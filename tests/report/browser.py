"""Headless Chromium for the report tests: open a page, dump its DOM after the scripts ran, screenshot it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1600, 1000)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    """One element of a dumped DOM: tag, attributes, and the text of its subtree."""

    tag: str
    attrs: dict[str, str]
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """Just enough of a DOM for assertions: every element in order, each with its subtree's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(e)
        if tag not in VOID:
            self._open.append(e)

    def handle_endtag(self, tag: str) -> None:
        for k in range(len(self._open) - 1, -1, -1):
            if self._open[k].tag == tag:
                del self._open[k:]
                return

    def handle_data(self, data: str) -> None:
        for e in self._open:
            if e.tag not in ("html", "body", "main", "script", "style") and ("id" in e.attrs or "class" in e.attrs):
                e.text += data

    def by_id(self, ident: str) -> Element:
        found = [e for e in self.elements if e.attrs.get("id") == ident]
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]

    def by_class(self, cls: str) -> list[Element]:
        return [e for e in self.elements if cls in e.classes]


@dataclass
class Rendered:
    """What one headless Chromium run of a page gave: the DOM after its scripts, the log, a PNG."""

    dom: Dom
    stderr: str
    screenshot: Path
    seconds: float

    def console_lines(self) -> list[str]:
        """The page's console output and uncaught errors (the report writes none, so any is a fault)."""
        return [ln for ln in self.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def render_page(browser: str, page: Path, screenshot: Path, fragment: str = "") -> Rendered:
    """Open ``page`` (with ``#fragment``) in headless Chromium: the DOM after load, and a screenshot."""
    with tempfile.TemporaryDirectory(prefix="p2pdma-chromium-") as profile:
        cmd = [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            page.resolve().as_uri() + (f"#{fragment}" if fragment else ""),
        ]
        env = dict(os.environ, HOME=profile)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, cwd=profile)
        seconds = time.perf_counter() - t
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return Rendered(Dom(proc.stdout), proc.stderr, screenshot, seconds)
