"""YAML and JSON from untrusted files with limits: nesting depth, an alias expansion budget (no
"billion laughs"), plain tags only, no duplicate keys, size capped by the reading layer (files.py).

    load_yaml(source, what="spec")    source: a Path (read through files.read_text) or YAML text
    load_json(source, what="spec")
    load_file(path, kind="spec")      YAML, or JSON when the name ends in .json

YAML is checked on its event stream (libyaml's C parser when present) before anything is
constructed, so a bomb is refused after reading its few kilobytes, not after expanding it.
Every refusal is an InputError with one line that names the limit.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import yaml

from p2pdma.errors import InputError
from p2pdma.sources import files

MAX_DEPTH = 128  # nested mappings/sequences (YAML, JSON); offered to the XML sources too
MAX_ALIASES = 256  # alias uses in one YAML document
MAX_NODES = 2_000_000  # nodes after expanding aliases: the cost a walk over the document pays
PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)

_Loader: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class _Refused(Exception):
    pass


def _line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = " ".join(text.split("\n")[0:1]).strip()
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    if problem:
        first = str(problem)
    return (first[:200] + where).strip()


def _check_events(text: str, max_depth: int, max_aliases: int, max_nodes: int) -> None:
    """One pass over the parser's events: depth, tags, duplicate scalar keys, alias expansion."""
    depth = 0
    aliases = 0
    # per open collection: [is_mapping, expecting_key, keys seen, node count of this collection]
    stack: list[list[Any]] = []
    anchor_size: dict[str, int] = {}
    open_anchors: list[tuple[str, int]] = []  # (anchor, index in stack) of collections being built
    total = 0

    def add(n: int) -> None:
        nonlocal total
        total += n
        if total > max_nodes:
            raise _Refused(f"more than {max_nodes} nodes once aliases are expanded")
        for frame in stack:
            frame[3] += n

    def key_check(ev: Any) -> None:
        if not stack or not stack[-1][0]:
            return
        frame = stack[-1]
        if frame[1]:
            if isinstance(ev, yaml.ScalarEvent):
                k = ev.value
                if k in frame[2] and k != "<<":
                    raise _Refused(f"duplicate key {k[:60]!r}{_at(ev)}")
                frame[2].add(k)
            elif not isinstance(ev, yaml.AliasEvent):
                raise _Refused(f"a mapping key must be a plain scalar{_at(ev)}")
        frame[1] = not frame[1]

    def tag_check(ev: Any) -> None:
        tag = getattr(ev, "tag", None)
        if tag is None or tag in ("!", "?"):
            return
        full = tag
        if tag.startswith("!!"):
            full = "tag:yaml.org,2002:" + tag[2:]
        if full not in PLAIN_TAGS:
            raise _Refused(f"tag {tag[:60]!r} is not allowed (plain scalars, lists and mappings only){_at(ev)}")

    parser = _Loader(text)  # only its parser is used: events, nothing constructed
    try:
        while True:
            ev = parser.get_event()
            if ev is None:
                break
            if isinstance(ev, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentStartEvent)):
                continue
            if isinstance(ev, yaml.DocumentEndEvent):
                continue
            if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = stack.pop()
                depth -= 1
                if open_anchors and open_anchors[-1][1] == len(stack):
                    name, _ = open_anchors.pop()
                    anchor_size[name] = frame[3]
                continue
            key_check(ev)
            if isinstance(ev, yaml.AliasEvent):
                aliases += 1
                if aliases > max_aliases:
                    raise _Refused(f"more than {max_aliases} aliases{_at(ev)}")
                if ev.anchor not in anchor_size:
                    raise _Refused(f"alias *{ev.anchor} refers to no finished anchor{_at(ev)}")
                add(anchor_size[ev.anchor])
                continue
            tag_check(ev)
            add(1)
            anchor = getattr(ev, "anchor", None)
            if isinstance(ev, yaml.ScalarEvent):
                if anchor is not None:
                    anchor_size[anchor] = 1
                continue
            # a collection starts
            depth += 1
            if depth > max_depth:
                raise _Refused(f"nested deeper than {max_depth} levels{_at(ev)}")
            stack.append([isinstance(ev, yaml.MappingStartEvent), True, set(), 1])
            if anchor is not None:
                open_anchors.append((anchor, len(stack) - 1))
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()


def _at(ev: Any) -> str:
    mark = getattr(ev, "start_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def _text_of(source: str | bytes | os.PathLike[str], kind: str, limit: int | None) -> tuple[str, str]:
    if isinstance(source, os.PathLike):
        return files.read_text(source, kind=kind, limit=limit), files.shown(source)
    if isinstance(source, bytes):
        cap = files.limit_for(kind, limit)
        if len(source) > cap:
            raise InputError(f"more than the {cap} bytes allowed here", errno.EFBIG)
        return files.decode(source, "input"), ""
    cap = files.limit_for(kind, limit)
    if len(source) > cap:
        raise InputError(f"more than the {cap} characters allowed here", errno.EFBIG)
    return source, ""


def _named(what: str, where: str) -> str:
    return where or what


def load_yaml(source: str | bytes | os.PathLike[str], *, what: str = "YAML", kind: str = "yaml",
              limit: int | None = None, max_depth: int = MAX_DEPTH, max_aliases: int = MAX_ALIASES,
              max_nodes: int = MAX_NODES) -> Any:
    """Parse YAML safely: a Path is read through files.read_text(kind=...), a str or bytes is the text.
    InputError ``WHAT: refused: WHY`` / ``WHAT: not valid YAML (...)``, one line."""
    text, where = _text_of(source, kind, limit)
    name = _named(what, where)
    try:
        _check_events(text, max_depth, max_aliases, max_nodes)
    except _Refused as exc:
        raise InputError(f"{name}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1000) met before ours
            raise InputError(f"{name}: refused: nested deeper than {max_depth} levels") from None
        raise InputError(f"{name}: not valid YAML ({_line(exc)})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - safe loader, events checked above
    except yaml.YAMLError as exc:
        raise InputError(f"{name}: not valid YAML ({_line(exc)})") from None
    except (ValueError, OverflowError, TypeError, RecursionError) as exc:
        raise InputError(f"{name}: a value cannot be read ({_line(exc)})") from None


def _no_dup_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {k[:60]!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def depth_of(doc: Any, stop: int) -> int:
    """Nesting depth of lists/dicts in ``doc`` (iterative; stops counting past ``stop``)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(doc, 0)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, (dict, list)):
            d += 1
            if d > deepest:
                deepest = d
                if deepest > stop:
                    return deepest
            todo.extend((v, d) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def load_json(source: str | bytes | os.PathLike[str], *, what: str = "JSON", kind: str = "json",
              limit: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON with the same limits as YAML: size (kind), depth, no duplicate keys, no NaN."""
    text, where = _text_of(source, kind, limit)
    name = _named(what, where)
    try:
        doc = json.loads(text, object_pairs_hook=_no_dup_pairs, parse_constant=_no_constants)
    except _Refused as exc:
        raise InputError(f"{name}: refused: {exc}") from None
    except RecursionError:
        raise InputError(f"{name}: refused: nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:  # int with too many digits
        raise InputError(f"{name}: a value cannot be read ({_line(exc)})") from None
    if depth_of(doc, max_depth) > max_depth:
        raise InputError(f"{name}: refused: nested deeper than {max_depth} levels")
    return doc


def load_file(path: str | os.PathLike[str], *, kind: str = "spec", what: str | None = None,
              limit: int | None = None) -> Any:
    """A YAML or JSON file (JSON when its name ends in .json), read through the reading layer."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return load_json(p, what=what or files.shown(p), kind=kind, limit=limit)
    return load_yaml(p, what=what or files.shown(p), kind=kind, limit=limit)


# -- the names the scenario and check loaders look for (sources.safeyaml) ------------------------
def load_path(path: str | os.PathLike[str], *, kind: str = "model") -> Any:
    """A YAML file through the reading layer and the safe loader."""
    return load_yaml(Path(path), what=files.shown(path), kind=kind)


def loads(text: str, where: str = "YAML", *, kind: str = "yaml") -> Any:
    """YAML text (already read) through the safe loader."""
    return load_yaml(text, what=where, kind=kind)
