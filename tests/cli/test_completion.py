"""Shell completion and the man page are generated from the parser: every command, option and
choice is in them, bash really completes with the script, and groff renders the page cleanly."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from p2pdma.cli import build_parser, main
from p2pdma.cli.completion import _commands


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _complete(script: Path, words: list[str]) -> list[str]:
    """What bash's completion function offers for the command line ``words`` (the last is the cursor word)."""
    arr = " ".join(f"'{w}'" for w in words)
    prog = (f"source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; _p2pdma; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_options_choices_and_files(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    script = tmp_path / "p2pdma.bash"
    script.write_text(_out(capsys, "completion", "bash"))
    assert _complete(script, ["p2pdma", "ma"]) == ["matrix", "man"]
    assert "--max-functions" in _complete(script, ["p2pdma", "matrix", "--max"])
    assert _complete(script, ["p2pdma", "matrix", "--kernel", "pci"]) == ["pci-next"]
    assert _complete(script, ["p2pdma", "fleet", "--engine", ""]) == ["pool", "dask", "serial"]
    (tmp_path / "capture-x.tar.gz").write_text("")
    got = _complete(script, ["p2pdma", "topo", "--root", str(tmp_path / "cap")])
    assert got == [str(tmp_path / "capture-x.tar.gz")]
    # every option of every command is offered after its command
    for name, p in _commands(build_parser()).items():
        offered = set(_complete(script, ["p2pdma", name, "-"]))
        want = {o for a in p._actions for o in a.option_strings}
        assert want <= offered, (name, want - offered)
    assert "bashcompinit" in _out(capsys, "completion", "zsh")


def test_man_page_lists_every_command_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    page = _out(capsys, "man")
    assert page.startswith(".TH P2PDMA 1 ") and ".SH EXIT STATUS" in page
    for name, p in _commands(build_parser()).items():
        assert f".SS p2pdma {name}" in page, name
        for a in p._actions:
            if a.option_strings and not isinstance(a, argparse._HelpAction):
                assert a.option_strings[0].replace("-", "\\-") in page, (name, a.option_strings)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_renders_the_man_page_without_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    page = _out(capsys, "man")
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=page, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = re.sub(".\x08", "", done.stdout).replace("\u2010", "-").replace("\u2212", "-")  # overstrike bold
    assert "P2PDMA(1)" in text and "--max-functions N" in text and "EXIT STATUS" in text
