"""``p2pdma topo --dot``: a digraph with one node per function and host bridge, an edge per parent link."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from p2pdma.cli import main
from p2pdma.examples import load, names
from p2pdma.pci.topology import Topology
from p2pdma.report.dot import quote, render_dot

NODE_RE = re.compile(r'^  "((?:[^"\\]|\\.)*)" \[(.*)\];$')
EDGE_RE = re.compile(r'^  "((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"(?: \[(.*)\])?;$')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Node statements (id -> attributes) and edges (tail, head, attributes) of our DOT output."""
    lines = text.strip().splitlines()
    assert lines[0].startswith("digraph ") and lines[0].endswith("{") and lines[-1] == "}"
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str, str]] = []
    for ln in lines[1:-1]:
        if ln.startswith(("  graph [", "  node [", "  edge [")):
            continue
        if m := EDGE_RE.match(ln):
            edges.append((m[1], m[2], m[3] or ""))
        elif m := NODE_RE.match(ln):
            assert m[1] not in nodes, f"node {m[1]} twice"
            nodes[m[1]] = m[2]
        else:
            raise AssertionError(f"not a node or edge statement: {ln!r}")
    assert text.count("{") == text.count("}") == 1
    return nodes, edges


def check_structure(topo: Topology, text: str) -> None:
    nodes, edges = parse(text)
    assert set(nodes) == {d.bdf for d in topo.devices} | {h.name for h in topo.host_bridges}
    parent_edges = [(a, b) for a, b, attrs in edges if 'style="dotted"' not in attrs]
    assert sorted(parent_edges) == sorted(
        (d.parent if d.parent is not None else d.host_bridge, d.bdf) for d in topo.devices
    )
    vf_edges = [(a, b) for a, b, attrs in edges if 'style="dotted"' in attrs]
    assert sorted(vf_edges) == sorted((d.physfn, d.bdf) for d in topo.devices if d.physfn)


@pytest.mark.parametrize("name", names())
def test_dot_structure(name: str) -> None:
    check_structure(load(name), render_dot(load(name)))


def test_dot_500_endpoints(big_topology: Topology) -> None:
    check_structure(big_topology, render_dot(big_topology))


def test_dot_marks_acs_and_links() -> None:
    nodes, edges = parse(render_dot(load("acs-redirect")))
    assert "ACS SV,RR,CR,UF" in nodes["0000:02:00.0"] and 'color="#e03131"' in nodes["0000:02:00.0"]
    assert "ACS -" in nodes["0000:07:02.0"] and "#e03131" not in nodes["0000:07:02.0"]
    labels = {(a, b): attrs for a, b, attrs in edges}
    assert 'label="x16 8GT/s"' in labels[("0000:02:00.0", "0000:03:00.0")]
    assert labels[("0000:01:00.0", "0000:02:00.0")] == ""  # inside the switch: no link


def test_quote() -> None:
    assert quote('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


def test_topo_dot_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topo", "--dot", "--example", "sriov-nic"]) == 0
    out = capsys.readouterr().out
    check_structure(load("sriov-nic"), out)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
@pytest.mark.parametrize("name", ["gpu8-switches", "sriov-nic"])
def test_graphviz_accepts_it(name: str) -> None:
    proc = subprocess.run(["dot", "-Tsvg"], input=render_dot(load(name)), capture_output=True, text=True)
    assert proc.returncode == 0 and "<svg" in proc.stdout, proc.stderr
