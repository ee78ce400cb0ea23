"""``p2pdma capture OUT``: save what the verdict reads (sysfs, procfs) as one archive."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from p2pdma.cli import COMMAND_HELP


def add_parser(sub: Any) -> None:
    """Register ``capture``."""
    c = sub.add_parser("capture", help=COMMAND_HELP["capture"])
    c.add_argument("out", metavar="OUT.tar.gz",
                   help="archive to write (.tar.gz, .tar, .tar.bz2, .tar.xz); - writes a .tar.gz to stdout")
    c.add_argument("--source-root", "--root", dest="source_root", metavar="DIR", default="/",
                   help="root to capture (default: the live /)")
    c.add_argument("--json", action="store_true", help="print the capture's manifest as JSON")
    c.add_argument("--force", action="store_true", help="replace OUT if it is an existing file")
    c.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the archive with the stand-alone writer (``-``: to stdout); the manifest's notes go to stderr."""
    from p2pdma.errors import InputError
    from p2pdma.sources.capture import CaptureError, capture, describe

    to_stdout = args.out == "-"
    if to_stdout and args.json:
        raise InputError("capture -: the archive goes to stdout, so --json cannot; name a file instead")
    try:
        if to_stdout:
            manifest = capture(args.out, args.source_root, stream=sys.stdout.buffer)
        else:
            manifest = capture(args.out, args.source_root, force=args.force)
    except CaptureError as exc:
        raise InputError(str(exc)) from None
    if args.json:
        print(json.dumps(manifest, indent=1, sort_keys=True))
    for line in describe(manifest, args.out):
        print(f"p2pdma: {line}", file=sys.stderr)
    return 0
