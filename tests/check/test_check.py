"""The checker: each bundled model's verdict, shortest traces of exact length, reductions, bounds,
model files, and the p2pdma.check/1 contract with its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.check.explore import check, replay
from p2pdma.check.invariants import INVARIANTS
from p2pdma.check.models import BUNDLED, load_model
from p2pdma.cli import main
from p2pdma.errors import InputError


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_verdicts(name: str) -> None:
    spec = BUNDLED[name]
    if name == "dmabuf-revoke":
        spec = spec.with_importers(1)
    r = check(spec)
    assert r.verdict == spec.expect and r.complete
    if r.verdict == "holds":
        assert r.invariant is None and r.trace == [] and r.states > 1
    else:
        assert r.invariant in {i.name for i in INVARIANTS} and r.trace


def test_dmabuf_revoke_with_two_importers_holds_and_symmetry_shrinks_it() -> None:
    spec = BUNDLED["dmabuf-revoke"]
    with_sym = check(spec, symmetry=True)
    without = check(spec, symmetry=False)
    assert with_sym.verdict == without.verdict == "holds"
    assert with_sym.complete and without.complete
    assert with_sym.states < without.states


def test_seeded_exporter_bug_gives_a_minimal_trace() -> None:
    """Revoke that does not wait for fences: export, attach+map, revoke trigger, and the revoke
    completes with the importer's invalidation still unacknowledged: 3 steps, none shorter."""
    r = check(BUNDLED["revoke-no-wait"])
    assert r.verdict == "violated" and r.invariant == "revoke-waits"
    assert len(r.trace) == 3
    assert [s.action for s in r.trace[:2]] == ["export", "importer 0 attaches and maps"]
    assert r.trace[2].action in ("decode-off", "reset", "close")
    # the same exporter with the wait in place holds under the same triggers
    from dataclasses import replace
    assert check(replace(BUNDLED["revoke-no-wait"], wait_for_fences=True)).verdict == "holds"


def test_ignoring_importer_and_provider_without_revoke_traces() -> None:
    r = check(BUNDLED["importer-ignores-invalidate"])
    assert (r.invariant, len(r.trace)) == ("no-mapping-after-revoke", 3)
    p = check(BUNDLED["provider-no-revoke"])
    assert p.invariant == "provider-outlives-dma"
    assert [s.action for s in p.trace] == ["peer 0 maps the BAR and starts a DMA", "unbind"]
    assert any("provider: - -> released" in c for c in p.trace[1].changes)


def test_trace_replays_to_the_violation() -> None:
    r = check(BUNDLED["importer-ignores-invalidate"])
    again = replay(BUNDLED["importer-ignores-invalidate"], [s.action for s in r.trace])
    assert [s.changes for s in again] == [s.changes for s in r.trace]


def test_bounds_are_reported() -> None:
    r = check(BUNDLED["dmabuf-revoke"].with_importers(1), max_states=40)
    assert r.verdict == "holds" and not r.complete and r.bound == "40 states" and r.states == 40
    d = check(BUNDLED["dmabuf-revoke"].with_importers(1), max_depth=2)
    assert not d.complete and d.bound == "depth 2"


def test_model_files(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("importers: [{kind: ignores-invalidate, dev: '0000:0a:00.0'}]\ntriggers: [reset]\n")
    r = check(load_model(str(f)))
    assert r.model == "mine" and r.verdict == "violated"
    assert "reset" in [s.action for s in r.trace]
    f.write_text("importers: [{kind: teleporter, dev: '0000:0a:00.0'}]\n")
    with pytest.raises(InputError, match="unknown importer kind"):
        load_model(str(f))
    f.write_text("color: blue\n")
    with pytest.raises(InputError, match="unknown keys"):
        load_model(str(f))
    f.write_text("owner: '0000:ee:00.0'\n")
    with pytest.raises(InputError, match="no device 0000:ee:00.0"):
        check(load_model(str(f)))


def test_cli_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "provider-with-revoke", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "p2pdma.check/1" and doc["verdict"] == "holds" and doc["invariant"] is None
    assert isinstance(doc["states"], int) and isinstance(doc["seconds"], float) and doc["trace"] == []
    assert main(["check", "importer-ignores-invalidate", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "violated" and doc["invariant"] == "no-mapping-after-revoke"
    assert [s["step"] for s in doc["trace"]] == [1, 2, 3]
    assert all(set(s) == {"step", "action", "changes"} for s in doc["trace"])
    assert main(["check", "no-such-model"]) == 2
    assert main(["check", "dmabuf-revoke", "--importers", "0"]) == 2
    assert main(["check", "revoke-no-wait"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATED" in out and "shortest trace (3 steps)" in out
