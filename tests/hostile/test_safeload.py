"""YAML bombs, deep nesting, tags, duplicate keys; JSON with the same limits. Generated, seeded."""

from __future__ import annotations

import json
import random
import resource
import time

import pytest

from p2pdma.errors import InputError
from p2pdma.sources import safeload


def laughs(levels: int, fan: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("levels", "fan"), [(9, 9), (12, 10), (30, 2), (5, 60)])
def test_alias_bombs_are_refused_fast_and_small(levels: int, fan: int) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="refused: more than") as ei:
        safeload.load_yaml(laughs(levels, fan), what="spec.yaml")
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB
    assert str(ei.value).startswith("spec.yaml: refused: ") and "\n" not in str(ei.value)


def test_a_few_aliases_are_fine() -> None:
    doc = safeload.load_yaml("base: &b {size: 16M}\nbars: [*b, *b]\n")
    assert doc == {"base": {"size": "16M"}, "bars": [{"size": "16M"}, {"size": "16M"}]}


@pytest.mark.parametrize("seed", range(3))
def test_deep_nesting_is_refused(seed: int) -> None:
    r = random.Random(seed)
    depth = r.randint(safeload.MAX_DEPTH + 1, 20_000)
    opener, closer = r.choice([("[", "]"), ("{a: ", "}")])
    with pytest.raises(InputError, match="nest") as ei:
        safeload.load_yaml(opener * depth + "1" + closer * depth)
    assert "\n" not in str(ei.value)
    with pytest.raises(InputError, match=f"nested deeper than {safeload.MAX_DEPTH}"):
        safeload.load_json("[" * depth + "]" * depth)
    ok = "[" * safeload.MAX_DEPTH + "]" * safeload.MAX_DEPTH
    assert safeload.load_json(ok) is not None and safeload.load_yaml(ok) is not None


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['true']", "!!binary aGk=", "!custom 1",
                                 "!!set {a}", "!<tag:example.com,2000:x> 1"])
def test_non_plain_tags_are_refused(tag: str) -> None:
    with pytest.raises(InputError, match="is not allowed"):
        safeload.load_yaml(f"a: {tag}\n")


def test_plain_tags_and_duplicates() -> None:
    assert safeload.load_yaml("a: !!int '7'\nb: !!str 8\n") == {"a": 7, "b": "8"}
    with pytest.raises(InputError, match="duplicate key 'a'"):
        safeload.load_yaml("a: 1\nb: 2\na: 3\n")
    with pytest.raises(InputError, match="duplicate key 'a'"):
        safeload.load_json('{"a": 1, "a": 2}')
    with pytest.raises(InputError, match="NaN is not a JSON number"):
        safeload.load_json("[NaN]")


def test_syntax_errors_are_one_line() -> None:
    for text in ("a: [1, 2\n", "a: b: c\n", "\t- x"):
        with pytest.raises(InputError, match="not valid YAML") as ei:
            safeload.load_yaml(text, what="s.yaml")
        assert "\n" not in str(ei.value) and str(ei.value).startswith("s.yaml: ")
    with pytest.raises(InputError, match=r"not valid JSON \(Expecting"):
        safeload.load_json('{"a": ')


@pytest.mark.parametrize("seed", range(5))
def test_random_documents_round_trip(seed: int) -> None:
    """Plain documents within the limits load as json would load them."""
    r = random.Random(seed)

    def gen(d: int) -> object:
        k = r.random()
        if d > 6 or k < 0.3:
            return r.choice([r.randint(-1000, 1000), "s" + str(r.randint(0, 99)), True, None])
        if k < 0.65:
            return [gen(d + 1) for _ in range(r.randint(0, 4))]
        return {f"k{i}": gen(d + 1) for i in range(r.randint(0, 4))}

    doc = gen(0)
    text = json.dumps(doc)
    assert safeload.load_json(text) == doc
    assert safeload.load_yaml(text) == doc
