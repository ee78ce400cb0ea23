"""The ``p2pdma fix A B [C ...]`` / ``--all-pairs`` command: what to change in ACS, and what it costs.

Prints the smallest ACS Control change (plan_fix()), the three ways to apply it, the IOMMU groups
before and after (the isolation it costs), the IOMMU mapping of pairs that stay behind the host
bridge, and a warning when the machine is a VM. ``--json`` prints ``p2pdma.fix/1``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdma.cli import COMMAND_HELP
from p2pdma.cli.common import (
    add_source_args,
    add_view_args,
    load_topology,
    machine_source,
    resolve,
    select,
    terminal,
    warn,
    with_kernel_source,
)
from p2pdma.errors import InputError

if TYPE_CHECKING:
    from p2pdma.p2p.fix import FixPlan
    from p2pdma.p2p.groups import Groups, Merge
    from p2pdma.pci.topology import Topology

FIX_SCHEMA = "p2pdma.fix/1"
MAX_LISTED = 24


def add_parser(subparsers: Any) -> None:
    """Register ``fix``."""
    p = subparsers.add_parser(
        "fix", help=COMMAND_HELP["fix"]
    )
    p.add_argument("devices", nargs="*", metavar="BDF",
                   help="two or more functions (every ordered pair): alias GPU0, dN, BDF or OS name")
    p.add_argument("--all-pairs", action="store_true",
                   help="every pair of the devices people peer (with --all-functions: of every non-bridge function)")
    add_source_args(p)
    add_view_args(p, devices=False)
    p.set_defaults(handler=cmd_fix)


def _root_of(args: argparse.Namespace) -> Path | None:
    """The sysfs root (directory or archive) the machine came from, when it came from one."""
    kind, value = machine_source(args)
    if kind is None:
        return Path("/")
    if kind == "root" and value:
        return Path(value)
    return None


def _select(topo: Topology, args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The functions to plan for and the hidden-functions summary (--all-pairs with the default filter)."""
    if args.all_pairs and args.devices:
        raise InputError("give devices or --all-pairs, not both")
    if args.all_pairs:
        sel = select(args, topo)
        return list(sel.bdfs), sel.summary(topo)
    if args.all_functions or args.classes is not None:
        raise InputError("--all-functions and --class choose the devices of --all-pairs")
    if len(args.devices) < 2:
        raise InputError("fix needs two or more devices (or --all-pairs)")
    out = [resolve(topo, name).bdf for name in args.devices]
    if len(set(out)) < 2:
        raise InputError("fix needs two or more distinct devices")
    return out, None


def _groups_json(g: Groups) -> list[dict[str, Any]]:
    return [{"devices": list(x.devices), "certain": x.certain} for x in g.groups]


def _merge_json(ms: list[Merge]) -> list[dict[str, Any]]:
    return [{"devices": list(m.devices), "before": [list(b) for b in m.before], "certain": m.certain} for m in ms]


def fix_document(plan: FixPlan, root: Path | None) -> dict[str, Any]:
    """The ``p2pdma.fix/1`` document for a plan (also what the text output prints)."""
    from p2pdma.p2p.fix import (
        CONFIG_ACS_NOTE,
        DISABLE_REDIR_NOTE,
        REDIRECT_BITS,
        SETPCI_NOTE,
        apply_acs_ctrl,
        config_acs_mask,
    )
    from p2pdma.p2p.groups import compare_with_kernel, iommu_groups, merges
    from p2pdma.pci import config as cfg
    from p2pdma.sources.iommu import guest_facts, iommu_from_topology, mapping_text, read_iommu

    topo = plan.topo
    before, after = iommu_groups(topo), iommu_groups(plan.fixed)
    redir = apply_acs_ctrl(topo, {c.bdf: c.before & ~REDIRECT_BITS for c in plan.changes})
    state = read_iommu(root, topo) if root is not None else iommu_from_topology(topo)
    guest = guest_facts(topo, root)
    through: dict[str, list[str]] = {}
    clients: set[str] = set()
    across: list[list[str]] = []
    for pf in plan.pairs:
        if pf.after.name == "THRU_HOST_BRIDGE" and pf.client not in clients:
            clients.add(pf.client)
            text = mapping_text(state, topo[pf.client], pf.after.name)
            if text:
                through.setdefault(text, []).append(pf.client)
        if (pf.fixable and pf.after.name == "BUS_ADDR" and pf.provider < pf.client
                and after.index[pf.provider] != after.index[pf.client]):
            across.append([pf.provider, pf.client])
    warnings = list(topo.warnings)
    if plan.unknown_ports:
        warnings.append(
            "ACS unknown at " + ", ".join(plan.unknown_ports[:8])
            + (f" and {len(plan.unknown_ports) - 8} more" if len(plan.unknown_ports) > 8 else "")
            + ": the change is computed as if they had no ACS capability; read config space as root to be sure"
        )
    g = guest.warning()
    if g:
        warnings.append(g)
    from p2pdma.pci.names import aliases

    alias_map = aliases(topo)
    return {
        "schema": FIX_SCHEMA,
        "tool_version": _version(),
        "kernel": plan.profile,
        "machine": topo.name,
        "devices": list(plan.devices),
        "aliases": {b: alias_map[b] for b in plan.devices if b in alias_map},
        "summary": {
            "pairs": plan.total_pairs,
            "before": plan.counts_before,
            "after": plan.counts_after,
            "unfixable": len(plan.unfixable),
        },
        "pairs": [
            {"provider": p.provider, "client": p.client, "before": p.before.name, "after": p.after.name,
             "certain": p.certain}
            for p in plan.pairs if p.fixable
        ],
        "unfixable": _unfixable(plan),
        "changes": [
            {"bdf": c.bdf, "port_type": c.port_type, "acs_ctrl_before": f"{c.before:#06x}",
             "acs_ctrl_after": f"{c.after:#06x}", "clear": f"{c.cleared:#06x}",
             "clear_bits": cfg.acs_bits_text(c.cleared), "config_acs": config_acs_mask(c)}
            for c in plan.changes
        ],
        "verified": plan.verified,
        "certain": plan.certain,
        "unknown_ports": list(plan.unknown_ports),
        "config_acs": plan.config_acs,
        "disable_acs_redir": plan.disable_acs_redir,
        "setpci": list(plan.setpci),
        "notes": [CONFIG_ACS_NOTE, DISABLE_REDIR_NOTE, SETPCI_NOTE] if plan.changes else [],
        "no_acs_help": _no_acs_help(plan),
        "iommu_groups": {
            "model": "pci_device_group() from ACS; kernel quirks ignored",
            "before": _groups_json(before),
            "after": _groups_json(after),
            "merged": _merge_json(merges(before, after)),
            "merged_with_disable_acs_redir": _merge_json(merges(before, iommu_groups(redir))),
            "direct_across_groups": across,
            "kernel_differs": compare_with_kernel(topo, before),
        },
        "iommu": {
            "active": state.active,
            "units": list(state.units),
            "group_types": {str(k): v for k, v in sorted(state.group_types.items())},
            "notes": list(state.notes),
            "thru_host_bridge": [{"clients": v, "mapping": k} for k, v in through.items()],
        },
        "vm": {"guest": guest.guest, "evidence": list(guest.evidence), "dmi": guest.dmi},
        "warnings": warnings,
    }


def _version() -> str:
    from p2pdma import __version__

    return __version__


def _unfixable(plan: FixPlan) -> list[dict[str, Any]]:
    """Pairs without a common upstream bridge, grouped by map type and reason."""
    groups: dict[tuple[str, str], list[list[str]]] = {}
    for p in plan.unfixable:
        groups.setdefault((p.before.name, p.reason), []).append([p.provider, p.client])
    return [{"map_type": k[0], "reason": k[1], "pairs": v} for k, v in groups.items()]


def _no_acs_help(plan: FixPlan) -> str | None:
    from p2pdma.p2p.fix import ALREADY_THRU_HOST, NO_ACS_HELP

    stuck = plan.unfixable
    if not stuck:
        return None
    if all(p.before.name == "THRU_HOST_BRIDGE" for p in stuck):
        return ALREADY_THRU_HOST
    return NO_ACS_HELP


def _listed(items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return items
    return [*items[:MAX_LISTED], f"  ... and {len(items) - MAX_LISTED} more (--json lists every one)"]


def render_fix(plan: FixPlan, doc: dict[str, Any]) -> str:
    """The text form of a fix document."""
    from p2pdma.pci import config as cfg

    s = doc["summary"]
    lines = [
        f"machine: {doc['machine']}   kernel rules: {doc['kernel']}   functions: {len(doc['devices'])}"
        f"   ordered pairs: {s['pairs']} (distinct, self pairs not counted)",
    ]
    if doc.get("kernel_source"):
        lines.append(f"kernel {doc['kernel']}: {doc['kernel_source']}")
    if doc.get("hidden"):
        lines.append(doc["hidden"])
    names = doc.get("aliases", {})

    def nm(b: str) -> str:
        return f"{names[b]} {b}" if b in names else b

    lines.append("before: " + ", ".join(f"{k} {v}" for k, v in s["before"].items()))
    need = doc["pairs"]
    stuck = doc["unfixable"]
    if need:
        lines.append("")
        lines.append("pairs the ACS change makes direct:")
        lines.extend(_listed([f"  {nm(p['provider'])} -> {nm(p['client'])}  {p['before']} -> {p['after']}"
                              + ("" if p["certain"] else "  (uncertain)") for p in need]))
    if stuck:
        lines.append("")
        lines.append("pairs no ACS change can help:")
        for u in stuck:
            eg = ", ".join(f"{names.get(a, a)} -> {names.get(b, b)}" for a, b in u["pairs"][:4])
            eg += ", ..." if len(u["pairs"]) > 4 else ""
            lines.append(f"  {len(u['pairs'])} pairs {u['map_type']} ({eg}):")
            lines.append(f"    {u['reason']}")
        lines.append(f"  {doc['no_acs_help']}")
    lines.append("")
    if not doc["changes"]:
        lines.append("no ACS change needed: every listed pair that shares an upstream bridge is already BUS_ADDR")
    else:
        lines.append("the change, port by port (ACS Control register, ECAP_ACS+0x6):")
        for c in plan.changes:
            lines.append(
                f"  {c.bdf}  {c.port_type or '?'}  {c.before:#06x} [{cfg.acs_bits_text(c.before)}] -> "
                f"{c.after:#06x} [{cfg.acs_bits_text(c.after)}]  clear {cfg.acs_bits_text(c.cleared)}"
            )
        ok = "every listed pair that shares an upstream bridge is BUS_ADDR" if doc["verified"] else (
            "NOT every pair became BUS_ADDR (report this)")
        lines.append(f"re-verified by recomputing the verdicts with the change applied: {ok}")
        lines.append("after: " + ", ".join(f"{k} {v}" for k, v in s["after"].items()))
        lines.append("")
        lines.append("apply it at boot, on the kernel command line, either")
        lines.append(f"  {doc['config_acs']}")
        lines.append("or (more than needed where it differs)")
        lines.append(f"  {doc['disable_acs_redir']}")
        lines.append("or now, as root, until the next reboot or reset:")
        lines.extend(f"  {x}" for x in doc["setpci"])
        lines.append("notes:")
        lines.extend(f"  - {n}" for n in doc["notes"])
    g = doc["iommu_groups"]
    lines.append("")
    lines.append(f"the cost: IOMMU groups ({g['model']})")
    unsure = sum(1 for x in g["after"] if not x["certain"])
    lines.append(f"  before: {len(g['before'])} groups; after: {len(g['after'])} groups"
                 + (f" ({unsure} uncertain: ACS unknown)" if unsure else ""))
    if g["merged"]:
        lines.append("  these would share one group, so they could no longer be assigned to different VMs:")
        for m in g["merged"]:
            were = "; ".join(" ".join(b) for b in m["before"])
            flag = "" if m["certain"] else "  (uncertain: ACS unknown)"
            lines.append(f"    {' '.join(m['devices'])}  (were {len(m['before'])} groups: {were}){flag}")
    elif doc["changes"]:
        lines.append("  no groups merge: the change leaves VM isolation as it is")
    if g["direct_across_groups"]:
        lines.append("  these pairs reach each other directly (BUS_ADDR, no IOMMU) although the kernel keeps them")
        lines.append("  in separate groups (pci_device_group() checks only the ports above each function):")
        lines.extend(_listed([f"    {a} <-> {b}" for a, b in g["direct_across_groups"]]))
    if doc["changes"] and g["merged_with_disable_acs_redir"] != g["merged"]:
        n = len(g["merged_with_disable_acs_redir"])
        lines.append(f"  with pci=disable_acs_redir= instead: {n} merged groups (it clears more bits)")
    lines.extend(f"  {x}" for x in g["kernel_differs"])
    io = doc["iommu"]
    lines.append("")
    state = {True: "active", False: "not active", None: "unknown (the source does not say)"}[io["active"]]
    lines.append(f"IOMMU: {state}" + (f" ({', '.join(io['units'])})" if io["units"] else "")
                 + "".join(f"; {n}" for n in io["notes"]))
    for t in io["thru_host_bridge"]:
        who = ", ".join(names.get(c, c) for c in t["clients"][:6])
        who += f" and {len(t['clients']) - 6} more" if len(t["clients"]) > 6 else ""
        lines.append(f"  THRU_HOST_BRIDGE pairs, client {who}:")
        lines.append(f"    {t['mapping']}")
    for w in doc["warnings"][len(plan.topo.warnings):]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def cmd_fix(args: argparse.Namespace) -> int:
    """Plan the change for the chosen pairs and print it (text or ``p2pdma.fix/1``)."""
    from p2pdma.p2p.fix import plan_fix

    topo = load_topology(args)
    warn(topo)
    selected, hidden = _select(topo, args)
    plan = plan_fix(topo, selected, args.kernel)
    doc = fix_document(plan, _root_of(args))
    doc["hidden"] = hidden
    doc = with_kernel_source(doc, args)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(terminal().wrap(render_fix(plan, doc)))
    return 0


__all__ = ["FIX_SCHEMA", "add_parser", "cmd_fix", "fix_document", "render_fix"]
