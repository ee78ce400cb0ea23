"""``p2pdma check NAME|FILE.yaml``: explore a model, print the verdict and, when a rule breaks,
the shortest trace. Exit 0 when it holds, 1 when violated, 2 for bad input."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pdma.check.explore import Result
    from p2pdma.cli.common import Progress

CHECK_LIST_SCHEMA = "p2pdma.check-list/1"

def add_parser(sub: Any) -> None:
    """Register ``check``."""
    p = sub.add_parser("check", help=COMMAND_HELP["check"])
    p.add_argument("model", nargs="?", help="a bundled model (see `p2pdma check --list`) or a model .yaml file")
    p.add_argument("--importers", type=int, metavar="N", help="number of importers (models that have them)")
    p.add_argument("--max-states", type=int, default=500_000, metavar="N", help="stop after N states (reported)")
    p.add_argument("--max-depth", type=int, default=200, metavar="N", help="explore at most N steps deep")
    p.add_argument("--no-symmetry", action="store_true", help="turn off symmetry reduction of importers")
    p.add_argument("--list", action="store_true", help="list the bundled models and the invariants")
    p.add_argument("--json", action="store_true",
                   help="print one p2pdma.check/1 JSON document (with --list: p2pdma.check-list/1)")
    p.set_defaults(handler=run)


def render(r: Result) -> str:
    """The verdict as text: what was proved or the numbered trace."""
    from p2pdma.check.invariants import INVARIANTS

    lines = []
    scope = "" if r.complete else f" (bound reached: {r.bound}; not a proof beyond it)"
    if r.verdict == "holds":
        lines.append(f"{r.model}: HOLDS — all {len(INVARIANTS)} invariants in every reachable state{scope}")
    else:
        lines.append(f"{r.model}: VIOLATED — {r.invariant}: {r.reason}")
    lines.append(f"states {r.states}, transitions {r.transitions}, depth {r.depth}, {r.seconds:.2f} s, "
                 f"{r.states_per_second:,.0f} states/s, symmetry reduction {'on' if r.reductions else 'off'}")
    if r.trace:
        lines.append("")
        lines.append(f"shortest trace ({len(r.trace)} steps):")
        for st in r.trace:
            lines.append(f"  {st.n:>2}. {st.action}")
            for ch in st.changes:
                lines.append(f"        {ch}")
    return "\n".join(lines)


def stderr_progress(max_states: int) -> tuple[Callable[[int, int, float], None], Progress]:
    """check()'s progress callback for long runs: one common.Progress line, --max-states the total."""
    from p2pdma.cli.common import Progress

    bar = Progress("states")

    def draw(states: int, depth: int, seconds: float) -> None:
        bar.update(states, max_states, f", depth {depth}")

    return draw, bar


def run(args: argparse.Namespace) -> int:
    """Handler of ``p2pdma check``."""
    from p2pdma.check.explore import check
    from p2pdma.check.invariants import INVARIANTS, LIVENESS
    from p2pdma.check.models import BUNDLED, load_model

    if args.list or not args.model:
        if not args.model and not args.list:
            raise InputError("name a model (see `p2pdma check --list`)")
        if args.json:
            from p2pdma.report.documents import list_document

            doc = list_document(CHECK_LIST_SCHEMA, "models", [
                {"name": name, "expect": spec.expect, "description": spec.description}
                for name, spec in BUNDLED.items()])
            doc["invariants"] = [{"name": inv.name, "statement": inv.statement} for inv in INVARIANTS]
            doc["liveness"] = [{"name": inv.name, "statement": inv.statement} for inv in LIVENESS]
            print(json.dumps(doc, indent=1))
            return 0
        for name, spec in BUNDLED.items():
            print(f"{name:<30} expect {spec.expect:<9} {spec.description}")
        print()
        print("safety (in every reachable state):")
        for inv in INVARIANTS:
            print(f"  {inv.name:<33} {inv.statement}")
        print("liveness (from every reachable state, some way on reaches it):")
        for inv in LIVENESS:
            print(f"  {inv.name:<33} {inv.statement}")
        return 0
    spec = load_model(args.model)
    if args.importers is not None:
        if spec.mode == "provider" and spec.importers[0][0] == "peer" and args.importers != 1:
            raise InputError(f"model {spec.name} has one peer; --importers does not apply")
        spec = spec.with_importers(args.importers)
    if args.max_states < 1 or args.max_depth < 1:
        raise InputError("--max-states and --max-depth must be positive")
    draw, bar = stderr_progress(args.max_states)
    progress = draw if sys.stderr.isatty() and not args.json else None
    r = check(spec, max_states=args.max_states, max_depth=args.max_depth, symmetry=not args.no_symmetry,
              progress=progress)
    bar.clear()
    if args.json:
        from p2pdma.report.documents import stamp

        print(json.dumps(stamp(r.to_json()), indent=1))
    else:
        print(render(r))
    return 0 if r.verdict == "holds" else 1
