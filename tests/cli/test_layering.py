"""The command line lives in p2pdma.cli alone: library packages import no argparse, never import the
CLI, and write nothing to stdout or stderr (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import p2pdma

PKG = Path(p2pdma.__file__).parent
# The stand-alone capture script is copied to machines without p2pdma: its own main() is its face.
STANDALONE = {"sources/capture.py"}


def _library_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ("cli", "__main__.py"))


def _offences(path: Path) -> list[str]:
    rel = path.relative_to(PKG).as_posix()
    tree = ast.parse(path.read_text(), filename=rel)
    out: list[str] = []
    standalone_main = set()
    if rel in STANDALONE:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                standalone_main |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for n in names:
            if n == "argparse" and rel not in STANDALONE:
                out.append(f"{where}: imports argparse")
            if n == "p2pdma.cli" or n.startswith("p2pdma.cli."):
                out.append(f"{where}: imports the CLI")
        if id(node) in standalone_main:
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            out.append(f"{where}: calls print()")
        if (isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr")
                and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            out.append(f"{where}: uses sys.{node.attr}")
    return out


def test_library_packages_are_quiet_and_cli_free() -> None:
    mods = _library_modules()
    assert len(mods) > 30, "the walk found the package"
    offences = [o for m in mods for o in _offences(m)]
    assert offences == []


def test_the_walk_catches_an_offence(tmp_path: Path) -> None:
    bad = PKG / "report" / "_offence_probe.py"
    bad.write_text("import argparse\nimport sys\nfrom p2pdma.cli import main\nprint(1)\nsys.stderr.write('x')\n")
    try:
        got = _offences(bad)
    finally:
        bad.unlink()
    assert len(got) == 4


def test_no_registry_by_strings() -> None:
    """Only optional third-party packages (Dask, the [dask] extra) load by name; no p2pdma module does."""
    by_name: list[str] = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
                arg = node.args[0] if node.args else None
                name = arg.value if isinstance(arg, ast.Constant) else "<computed>"
                by_name.append(f"{path.relative_to(PKG).as_posix()}:{name}")
    assert by_name, "the walk sees the Dask import"
    assert [x for x in by_name if not x.split(":")[1].startswith(("distributed", "dask"))] == []


def test_streamed_matrix_json_is_the_document() -> None:
    import io
    import json

    from p2pdma import examples
    from p2pdma.cli.matrix import matrix_document, write_matrix_json

    topo = examples.load("acs-redirect")
    buf = io.StringIO()
    write_matrix_json(topo, "latest", False, buf)
    assert buf.getvalue() == json.dumps(matrix_document(topo, "latest", False)) + "\n"
    assert len(json.loads(buf.getvalue())["pairs"]) == len(topo.endpoints) ** 2


def test_explain_says_nvlink_on_the_dgx2(shared_hwloc: Path, capsys: object) -> None:
    import json

    from p2pdma.cli import main
    from p2pdma.sources import open_machine

    path = shared_hwloc / "nvidiaDGX2.xml"

    topo = open_machine("hwloc", str(path))
    a, b = sorted(topo.nvlinks)[0]
    assert main(["explain", a, b, "--hwloc", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert doc["nvlink"] is True and any("NVLink" in n for n in doc["notes"])


READERS = ("p2pdma.sources.archive", "p2pdma.sources.hwloc", "p2pdma.sources.lspci", "p2pdma.sources.nccl",
           "p2pdma.sources.sysfs.read_root", "load_capture", "read_hwloc", "read_lspci", "read_nccl_xml")


def test_fleet_scenarios_and_checker_open_machines_through_the_one_door() -> None:
    """No module of fleet, model or check calls a reader itself: machines come from sources.open_machine()
    (fleet/synth.py writes synthetic captures, it reads none)."""
    src = Path(__file__).resolve().parents[2] / "src" / "p2pdma"
    offenders = []
    for pkg in ("fleet", "model", "check"):
        for f in sorted((src / pkg).rglob("*.py")):
            if f.name == "synth.py":
                continue
            text = f.read_text()
            offenders += [f"{f.relative_to(src)}: {r}" for r in READERS if r in text]
    assert offenders == []
    assert "open_machine" in (src / "fleet" / "analyse.py").read_text()
