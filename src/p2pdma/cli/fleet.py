"""The ``p2pdma fleet DIR_OR_GLOB`` command: find the captures, run an engine (the process pool by
default; Dask with the ``p2pdma[dask]`` extra) with a progress bar on a terminal, print the fleet
table or the ``p2pdma.fleet/1`` JSON document, and with ``--out FILE.jsonl`` one
``p2pdma.fleet-machine/1`` line per machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.errors import InputError

# The engines, for --help without importing the fleet (a test keeps it equal to fleet.engines.ENGINES).
ENGINE_NAMES = ("pool", "dask", "serial")


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = 0.0

    def __call__(self, done: int, total: int, failed: int) -> None:
        if not self.tty or total == 0:
            return
        now = time.monotonic()
        if done != total and now - self.last < 0.1:
            return
        self.last = now
        filled = self.width * done // total
        rate = done / max(now - self.start, 1e-9)
        end = "\n" if done == total else ""
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} machines, {failed} failed,"
            f" {rate:.1f}/s{end}"
        )
        self.stream.flush()


def _kernel_help() -> str:
    """--kernel's help from p2p.kernels: the profiles, the aliases and what they stand for."""
    from p2pdma.p2p.kernels import ALIASES, NEWEST_MAINLINE, PROFILES

    names = ", ".join(PROFILES)
    return (f"kernel rules of one kernel tree for every machine: {names}; {' and '.join(ALIASES)}"
            f" are aliases of {NEWEST_MAINLINE}, the newest mainline profile (default)")


def add_parser(sub: Any) -> None:
    """Register ``fleet``."""
    from p2pdma.p2p.kernels import ALIASES, NEWEST_MAINLINE, PROFILES  # not decide: --help stays light

    f = sub.add_parser("fleet", help=COMMAND_HELP["fleet"])
    f.add_argument("captures", metavar="DIR_OR_GLOB", help="a directory of captures / hwloc XML files, or a glob")
    f.add_argument("--engine", choices=ENGINE_NAMES, default=None,
                   help="pool (default: local processes), dask (the p2pdma[dask] extra: a local cluster,"
                        " or --scheduler), serial")
    f.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: CPU count)")
    f.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (tcp://host:8786); implies dask")
    f.add_argument("--kernel", choices=(*PROFILES, *ALIASES), default=NEWEST_MAINLINE, help=_kernel_help())
    f.add_argument("--json", action="store_true", help="print one p2pdma.fleet/1 JSON document")
    f.add_argument("--out", metavar="FILE.jsonl",
                   help="also write one p2pdma.fleet-machine/1 JSON line per machine (sorted by name)")
    f.add_argument("--force", action="store_true", help="replace FILE.jsonl when it exists")
    f.set_defaults(handler=cmd_fleet)


def check_out(path: str, force: bool) -> None:
    """Refuse ``--out`` before the run rather than after it: ``-``, a directory, a missing folder, an
    existing file without ``--force`` (write_output() checks again when it writes)."""
    import errno

    from p2pdma.output import OutputError

    if path in ("", "-"):
        shown = path or "''"
        raise OutputError(f"--out {shown}: name a file (the summary goes to stdout)", errno.EINVAL)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: no such directory {folder}", errno.ENOENT)
    if os.path.isdir(path):
        raise OutputError(f"{path}: a directory, not written", errno.EISDIR)
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path}: exists; not replaced (--force to replace it)", errno.EEXIST)


def cmd_fleet(args: argparse.Namespace) -> int:
    """Run the fleet; exit 0 when the run completes (failed machines are rows, counted in the summary)."""
    from p2pdma.fleet.discover import find_tasks
    from p2pdma.fleet.engines import import_distributed, run
    from p2pdma.fleet.report import build_report, jsonl_text, render_text, report_json, summary_line

    engine = args.engine or ("dask" if args.scheduler else "pool")
    if args.scheduler and engine != "dask":
        raise InputError("--scheduler needs --engine dask")
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.out is not None:
        check_out(args.out, args.force)
    if engine == "dask":
        import_distributed()  # the missing extra in one line, before anything is read
    tasks = find_tasks(args.captures)
    bar = ProgressBar()
    t0 = time.monotonic()
    rows = run(tasks, args.kernel, engine, workers=args.workers, scheduler=args.scheduler, progress=bar)
    elapsed = time.monotonic() - t0
    rep = build_report(rows, args.kernel)
    if args.out is not None:
        from p2pdma.output import write_output

        write_output(args.out, jsonl_text(rep), force=args.force)
    if args.json:
        print(json.dumps(report_json(rep), indent=1))
    else:
        print(render_text(rep))
    rate = len(tasks) / elapsed if elapsed > 0 else 0.0
    wrote = f"; {len(rep.machines)} lines in {args.out}" if args.out is not None else ""
    print(
        f"p2pdma: fleet: {summary_line(rep)}; {elapsed:.1f} s, {rate:.1f} machines/s on engine {engine}{wrote}",
        file=sys.stderr,
    )
    return 0
