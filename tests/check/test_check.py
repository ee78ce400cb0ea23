"""The checker: each bundled model's verdict, shortest traces of exact length, reductions, bounds,
model files, and the p2pdma.check/1 contract with its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pdma.check.explore import check, replay
from p2pdma.check.invariants import INVARIANTS, LIVENESS
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
        assert r.invariant in {i.name for i in (*INVARIANTS, *LIVENESS)} and r.trace


def test_dmabuf_revoke_with_two_importers_holds_and_symmetry_shrinks_it() -> None:
    spec = BUNDLED["dmabuf-revoke"]
    with_sym = check(spec, symmetry=True)
    without = check(spec, symmetry=False)
    assert with_sym.verdict == without.verdict == "holds"
    assert with_sym.complete and without.complete
    assert with_sym.states < without.states


def test_seeded_exporter_bug_gives_a_minimal_trace() -> None:
    """Revoke that waits for nothing: export, attach+map, revoke trigger, and the revoke goes on
    with the importer's mapping still live (7.2 waits in wait_for_completion() for it,
    vfio_pci_dmabuf.c:vfio_pci_dma_buf_move()): 3 steps, none shorter."""
    r = check(BUNDLED["revoke-no-wait"])
    assert r.verdict == "violated" and r.invariant == "revoke-waits"
    assert len(r.trace) == 3
    assert [s.action for s in r.trace[:2]] == ["export", "importer 0 attaches and maps"]
    assert r.trace[2].action in ("decode-off", "reset", "close")
    # the same exporter with the wait in place holds under the same triggers
    from dataclasses import replace
    assert check(replace(BUNDLED["revoke-no-wait"], wait_for_fences=True)).verdict == "holds"


def test_ignoring_importer_and_provider_without_revoke_traces() -> None:
    """7.2 (vfio_pci_dmabuf.c:vfio_pci_dma_buf_move()) blocks the revoke until the importer unmaps,
    so no mapping survives a completed revoke; what the ignoring importer breaks is the DMA it
    starts through the invalidated mapping while the revoke waits."""
    r = check(BUNDLED["importer-ignores-invalidate"])
    assert (r.invariant, r.kind, len(r.trace)) == ("sanitizer-clean", "safety", 5)
    assert [s.action for s in r.trace][2:] == ["decode-off", "importer 0 starts a DMA", "importer 0 finishes its DMA"]
    assert any("blocked: decode-off" in c for c in r.trace[2].changes)
    p = check(BUNDLED["provider-no-revoke"])
    assert p.invariant == "provider-outlives-dma"
    assert [s.action for s in p.trace] == ["peer 0 maps the BAR and starts a DMA", "unbind"]
    assert any("provider: - -> released" in c for c in p.trace[1].changes)


def test_importer_that_never_unmaps_is_a_liveness_failure_with_the_shortest_trace() -> None:
    r = check(BUNDLED["importer-never-unmaps"])
    assert (r.verdict, r.kind, r.invariant) == ("violated", "liveness", "revoke-completes")
    assert [s.action for s in r.trace] == ["export", "importer 0 attaches and maps", "decode-off"]
    assert r.reason is not None and "never completes" in r.reason and "unmaps of dma-buf" in r.reason
    # the same importer that does let go (release) does not block the revoke forever
    from dataclasses import replace
    ok = check(replace(BUNDLED["importer-never-unmaps"], importers=(("ignores-invalidate", "0000:05:00.0"),)))
    assert ok.verdict == "holds" and ok.liveness_checked


def test_unrevoke_and_export_during_revoke_hold_and_break_without_the_waits() -> None:
    from dataclasses import replace
    for name in ("unrevoke-waits", "export-during-revoke"):
        r = check(BUNDLED[name])
        assert r.verdict == "holds" and r.complete and r.liveness_checked
    r = check(replace(BUNDLED["unrevoke-waits"], wait_for_fences=False, triggers=("decode-off", "decode-on")))
    assert r.verdict == "violated" and r.invariant in ("revoke-waits", "unrevoke-waits")
    # a blocked export is reachable: the second export sleeps behind the decode-off revoke
    from p2pdma.check.models import actions, cstate, initial
    spec = BUNDLED["export-during-revoke"]
    s = initial(spec)
    for label in ("export", "importer 0 attaches and maps", "importer 0 starts a DMA", "decode-off", "export #2"):
        dict(actions(spec, s))[label](s)
    assert len(cstate(s).export_tickets) == 1
    dict(actions(spec, s))["importer 0 finishes its DMA"](s)  # fences done; the revoke now waits for the unmap
    assert len(cstate(s).export_tickets) == 1
    dict(actions(spec, s))["importer 0 handles the invalidation"](s)  # the unmap: complete()
    from p2pdma.model import dmabuf as B
    from p2pdma.model import vfio as V
    assert cstate(s).export_tickets == [] and [V.buffer_status(s, b).name for b in sorted(B.state(s).bufs)] == [
        "TEMP_REVOKED", "TEMP_REVOKED"]


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


@pytest.mark.parametrize(("text", "message"), [
    ("bar: one\n", "bar: must be an integer"),
    ("bar: -1\n", "bar: must be a BAR number"),
    ("bar: true\n", "bar: must be an integer"),
    ("triggers: reset\n", "triggers: must be a list"),
    ("triggers: [reset, 3]\n", r"triggers\[1\]: must be text"),
    ("mode: quantum\n", "mode: must be one of vfio, provider"),
    ("static: 'yes'\n", "static: must be true or false"),
    ("wait_for_fences: 1\n", "wait_for_fences: must be true or false"),
    ("expect: 1\n", "expect: must be text"),
    ("expect: maybe\n", "expect: must be one of holds, violated"),
    ("dma_per_importer: 40\n", "dma_per_importer: must be within"),
    ("importers: [{kind: rdma, dev: 5}]\n", r"importers\[0\]\.dev: must be text"),
    ("importers: [{kind: rdma}]\n", r"importers\[0\]: must be a mapping with exactly kind and dev"),
    ("x: &x [1]\ntriggers: [" + "*x, " * 300 + "]\n", "alias"),
])
def test_model_fields_validated_by_type_with_their_path(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message):
        load_model(str(f))


def test_cli_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "provider-with-revoke", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "p2pdma.check/1" and doc["verdict"] == "holds" and doc["invariant"] is None
    assert isinstance(doc["states"], int) and isinstance(doc["seconds"], float) and doc["trace"] == []
    assert main(["check", "importer-ignores-invalidate", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "violated" and doc["invariant"] == "sanitizer-clean" and doc["kind"] == "safety"
    assert [s["step"] for s in doc["trace"]] == [1, 2, 3, 4, 5]
    assert all(set(s) == {"step", "action", "changes"} for s in doc["trace"])
    assert main(["check", "no-such-model"]) == 2
    assert main(["check", "dmabuf-revoke", "--importers", "0"]) == 2
    assert main(["check", "revoke-no-wait"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATED" in out and "shortest trace (3 steps)" in out
    assert main(["check", "importer-never-unmaps", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["kind"], doc["invariant"], len(doc["trace"])) == ("liveness", "revoke-completes", 3)
    assert doc["liveness"][0]["name"] == "revoke-completes" and doc["schema"] == "p2pdma.check/1"
    assert main(["check", "importer-never-unmaps"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATED — revoke-completes" in out and "never completes" in out and "shortest trace (3 steps)" in out


def test_bounds_refuse_models_the_checker_cannot_explore(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "dmabuf-revoke", "--importers", "40"]) == 2
    assert "at most 4" in capsys.readouterr().err
    with pytest.raises(InputError, match="at most 4"):
        BUNDLED["dmabuf-revoke"].with_importers(5)
