"""Start-up: `p2pdma --help` lists the commands without importing one command module, `p2pdma COMMAND`
imports that command's module alone, and both parse and print exactly as the full parser does."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from p2pdma.cli import COMMAND_HELP, build_parser


def _subcommands(p: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return {c.dest: c.help for c in sub._choices_actions}


def test_the_listing_is_the_full_parsers_commands_in_order() -> None:
    full = _subcommands(build_parser())
    assert list(full) == list(COMMAND_HELP)
    assert full == COMMAND_HELP


@pytest.mark.parametrize("cols", ["200", "80", "50"])
def test_listing_help_equals_the_full_help(cols: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", cols)
    assert build_parser(listing=True).format_help() == build_parser().format_help()
    assert build_parser(listing=True).format_usage() == build_parser().format_usage()


def _modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\nfrom p2pdma.cli import main\n"
        "try:\n    main(" + repr(argv) + ")\nexcept SystemExit:\n    pass\n"
        "sys.stdout.flush()\n"
        "print('loaded:', *sorted(m for m in sys.modules if m.startswith('p2pdma.cli.')), file=sys.stderr)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    last = got.stderr.strip().splitlines()[-1].split()
    assert last[0] == "loaded:"
    return set(last[1:])


def test_help_and_a_typo_import_no_command_module() -> None:
    assert _modules_after(["--help"]) == set()
    assert _modules_after(["matrx"]) == set()
    assert _modules_after([]) == set()


def test_a_command_imports_its_own_module_only() -> None:
    got = _modules_after(["examples"])
    assert "p2pdma.cli.examples" in got
    assert not got & {f"p2pdma.cli.{m}" for m in ("fleet", "report", "simulate", "check", "fix", "completion")}


@pytest.mark.parametrize("argv", [["--", "examples"], ["matrx"], ["--bogus"], ["-x", "matrix"], []])
def test_listing_and_full_parser_answer_alike(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    def answer(p: argparse.ArgumentParser) -> tuple[object, str, str]:
        try:
            ns = p.parse_args(argv)
            code: object = ("parsed", getattr(ns, "cmd", None))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    assert answer(build_parser(listing=True)) == answer(build_parser())
