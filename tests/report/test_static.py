"""The report's JavaScript and CSS are package files, inlined whole into every page, and the JS parses."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import pytest

from p2pdma.examples import load as load_example
from p2pdma.report.html import render_html

STATIC = resources.files("p2pdma.report") / "static"


def test_static_files_are_inlined_whole() -> None:
    page = render_html(load_example("gpu8-switches"), "7.2")
    js = (STATIC / "report.js").read_text(encoding="utf-8")
    css = (STATIC / "report.css").read_text(encoding="utf-8")
    assert len(js) > 10_000 and js in page and css in page
    # every placeholder of the shell was filled, and only once each
    for mark in ("__TITLE__", "__CSS__", "__JS__", "__DATA__"):
        assert mark not in page
    assert page.count("<script>") == 2 and page.startswith("<!DOCTYPE html>")


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed: the JS syntax check needs it")
def test_report_js_parses_with_node() -> None:
    with resources.as_file(STATIC / "report.js") as path:
        done = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
