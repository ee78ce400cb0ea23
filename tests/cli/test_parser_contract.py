"""The parser keeps every command and option of 0.1.0 (issue 13: the move into p2pdma.cli changed no
option); new commands, options and choices may only be added."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from p2pdma.cli import build_parser

BEFORE = Path(__file__).parent / "data" / "parser-0.1.0.json"


def _struct(p: argparse.ArgumentParser) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            res["_sub"] = {n: _struct(sp) for n, sp in sorted(a.choices.items())}
        else:  # each spelling on its own, so that adding an alias (--root beside --source-root) is additive
            for key in a.option_strings or [a.dest]:
                res[key] = [a.dest, repr(a.default), a.choices, repr(a.nargs), type(a).__name__]
    return res


def _compare(before: dict[str, Any], now: dict[str, Any], where: str) -> list[str]:
    out: list[str] = []
    for key, old in before.items():
        if key.startswith("_sub"):
            continue
        gone = [k for k in key.split(",") if k not in now]
        if gone:
            out.append(f"{where}: option {','.join(gone)} is gone")
            continue
        dest, _default, choices, nargs, kind = now[key.split(",")[0]]
        if dest != old[0] or nargs != old[4] or kind != old[6]:
            out.append(f"{where}: option {key} changed ({old} -> {now[key]})")
        if old[2] != "None":
            old_choices = set(eval(old[2]))  # noqa: S307 - our own repr of a tuple of str
            if choices is None or not old_choices <= set(choices):
                out.append(f"{where}: option {key} lost choices")
    for name, sub in before.get("_sub", {}).items():
        if name not in now.get("_sub", {}):
            out.append(f"command {name} is gone")
        else:
            out.extend(_compare(sub, now["_sub"][name], name))
    return out


def test_every_command_and_option_of_0_1_0_is_still_there() -> None:
    before = json.loads(BEFORE.read_text())
    now = _struct(build_parser())
    assert sorted(before["_sub"]) == sorted(set(before["_sub"]) & set(now["_sub"]))
    assert _compare(before, now, "p2pdma") == []


def test_the_comparison_notices_a_removed_option() -> None:
    before = json.loads(BEFORE.read_text())
    now = _struct(build_parser())
    del now["_sub"]["matrix"]["--all"]
    assert _compare(before, now, "p2pdma") == ["matrix: option --all is gone"]
