"""``p2pdma simulate [FILE|NAME]``: run a scenario on the run-time model and print a timeline and a
summary (or one ``p2pdma.simulate/1`` JSON document). Exit 0 without violations, 1 with, 2 on bad
input. With no argument the bundled ``seed-story`` runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.cli.common import add_source_args, load_topology, machine_source
from p2pdma.errors import InputError

if TYPE_CHECKING:  # the model loads only when the command runs, not for every p2pdma command
    from p2pdma.model import scenario as S
    from p2pdma.pci.topology import Topology

DEFAULT_SCENARIO = "seed-story"
SIMULATE_LIST_SCHEMA = "p2pdma.simulate-list/1"


def add_parser(sub: Any) -> None:
    """Register ``simulate``."""
    p = sub.add_parser("simulate", help=COMMAND_HELP["simulate"],
                       description="Run a scenario on the run-time model: a timeline of every step and a "
                                   "summary. Exit 0 without violations, 1 with, 2 on bad input.")
    p.add_argument("scenario", nargs="?", metavar="FILE|NAME",
                   help=f"a scenario YAML file or a bundled scenario (default: {DEFAULT_SCENARIO})")
    p.add_argument("--list", action="store_true", help="list the bundled scenarios")
    add_source_args(p)
    p.set_defaults(kernel=None, handler=cmd_simulate)  # the scenario's kernel unless --kernel is given


def _scenario(arg: str | None) -> S.Scenario:
    from p2pdma.model import scenario as S

    if arg is None:
        return S.load_bundled(S.DEFAULT_SCENARIO)
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json") or "/" in arg:
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a scenario file")
        return S.load_scenario(path)
    if arg in S.bundled_names():
        return S.load_bundled(arg)
    raise InputError(f"{arg}: no such file, nor a bundled scenario ({', '.join(S.bundled_names())})")


def _machine(sc: S.Scenario, args: argparse.Namespace) -> Topology:
    """The machine: --root/--example/--spec (and other sources) when given, else the scenario's,
    else the default example."""
    from p2pdma.model import scenario as S
    from p2pdma.sources import open_mapping

    if machine_source(args)[0] is not None:
        return load_topology(args)
    base = Path(sc.source).parent if Path(sc.source).exists() else Path(".")
    return open_mapping(sc.machine, base=base, default_example=S.DEFAULT_MACHINE)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the scenario; print the timeline or the JSON document; 1 when there is a violation."""
    from p2pdma.model import scenario as S

    if args.list:
        items = []
        for name in S.bundled_names():
            sc = S.load_bundled(name)
            items.append({"name": name, "description": sc.description, "default": name == S.DEFAULT_SCENARIO})
        if args.json:
            from p2pdma.report.documents import list_document

            print(json.dumps(list_document(SIMULATE_LIST_SCHEMA, "scenarios", items), indent=1))
            return 0
        for it in items:
            star = " (default)" if it["default"] else ""
            print(f"{it['name']:<20} {it['description']}{star}")
        return 0
    sc = _scenario(args.scenario)
    topo = _machine(sc, args)
    profile = args.kernel or sc.kernel or "latest"
    res = S.run_scenario(sc, topo, profile)
    if args.json:
        from p2pdma.report.documents import stamp

        print(json.dumps(stamp(res.to_json()), indent=1))
    else:
        print(render(res))
    return 1 if res.violations else 0


def render(res: S.RunResult) -> str:
    """The timeline and the summary, for a terminal."""
    from p2pdma.model import scenario as S

    sc = res.scenario
    out = [f"scenario {sc.name} on {res.machine} (kernel {res.profile}, IOMMU {sc.iommu}, seed {sc.seed})"]
    if sc.description:
        out.append(f"  {sc.description}")
    if sc.devices:
        devs = ", ".join(f"{d.name} {d.bdf} ({'vfio-pci' if d.bind == 'vfio' else d.bind or 'no driver'})"
                         for d in sc.devices.values())
        out.append(f"  devices: {devs}")
    out.append("")
    width = len(str(len(res.steps)))
    for r in res.steps:
        n = str(r.step.index).rjust(width)
        if r.step.op == "note":
            out.append(f"{' ' * width}  -- {r.summary}")
            continue
        mark = {"ok": " ", "waits": "~", "error": "x"}[r.status]
        got = r.errno if r.status == "error" else r.status
        expect = "  (as expected)" if r.step.expect not in (None, "ok") and got == r.step.expect else ""
        out.append(f"{n} {mark} {r.step.op:<10} {r.summary}{expect}")
        for e in r.events:
            out.append(f"{' ' * (width + 15)}. {e}")
        for v in r.violations:
            out.append(f"{' ' * (width + 3)}!! {v['kind']}: {v['message']}")
    out.append("")
    out.append("summary")
    moved = ", ".join(f"{p} {S.human(res.bytes_by_path[p])} ({res.bytes_by_path[p]} bytes)" for p in S.PATHS)
    out.append(f"  bytes moved   {moved}")
    if res.violations:
        out.append(f"  violations    {len(res.violations)}")
        for v in res.violations:
            out.append(f"    step {v['step']}: {v['kind']}: {v['message']}")
    else:
        out.append("  violations    none")
    out.append(f"  data intact   {'yes' if res.data_intact else 'NO'}")
    for m in res.mismatches:
        out.append(f"    {m}")
    if res.findings:  # the kernel's own defects the run met (the model follows the tree, so it shows them)
        out.append(f"  kernel findings {len(res.findings)}")
        for f in res.findings:
            out.append(f"    {f['kind']}: {f['message']}")
    for x in res.left:
        out.append(f"  note: {x}")
    return "\n".join(out)


__all__ = ["add_parser", "cmd_simulate", "render"]
