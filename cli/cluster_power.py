"""``flotilla describe cluster``'s power section: budget, draw, headroom, the capped GPUs,
the shortfall and the stale nodes, read from the status the powercap controller keeps
(``Cluster.status.power``; controlplane/controllers/powercap.py).

The PowerWithinBudget condition is in describe's Conditions table and the PowerCaps*
events in its Events, with the rest of the Cluster's; this section is the figures.
Plain data in, lines out: the CLI never loads Django.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from common.specs import PRIORITY_NAMES
from common.timeutil import age, parse_rfc3339

# Status keys shown here rather than in describe's YAML dump of the status.
SHOWN = ("power",)
MAX_ROWS = 64  # the controller keeps at most 64 capped GPUs
MAX_STALE_SHOWN = 16
PRIORITY_BY_VALUE = {value: name for name, value in PRIORITY_NAMES.items()}
LABEL = 15  # the width of describe's labels ("Name:          ")

Table = Callable[[list[list[str]], list[str]], str]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def watts(value: Any) -> str:
    """'10,000 W'; '-' when unknown."""
    number = _number(value)
    return "-" if number is None else f"{number:,.0f} W"


def priority(value: Any) -> str:
    """'batch (10)' for a named class, the number alone otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "-"
    name = PRIORITY_BY_VALUE.get(value)
    return f"{name} ({value})" if name else str(value)


def _line(label: str, text: str, indent: str = "") -> str:
    return f"{indent}{label + ':':<{LABEL - len(indent)}}{text}"


def _headline(power: dict[str, Any]) -> str:
    budget, draw = _number(power.get("budgetWatts")), _number(power.get("drawWatts"))
    text = f"budget {watts(budget)}, draw {watts(draw)}"
    if budget and draw is not None:
        text += f" ({100 * draw / budget:.0f}% of budget)"
    headroom = _number(power.get("headroomWatts"))
    if headroom is None and budget is not None and draw is not None:
        headroom = budget - draw
    if headroom is not None:
        text += f", over budget by {watts(-headroom)}" if headroom < 0 else f", headroom {watts(headroom)}"
    return text


def _capped_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    ordered = sorted(entries, key=lambda e: e.get("priority") if isinstance(e.get("priority"), int) else -1)
    for entry in ordered[:MAX_ROWS]:
        limit, board = _number(entry.get("limitWatts")), _number(entry.get("maxWatts"))
        share = f"{100 * limit / board:.0f}%" if limit is not None and board else "-"
        rows.append(
            [
                str(entry.get("node", "?"))[:63],
                str(entry.get("gpu", "?")),
                watts(limit),
                watts(board),
                share,
                str(entry.get("owner") or "idle")[:140],
                priority(entry.get("priority")),
            ]
        )
    return rows


def lines(
    spec: dict[str, Any], status: dict[str, Any], table: Table, at: datetime | None = None
) -> list[str]:
    """The section's lines; ``table`` is cli.output.table."""
    power = status.get("power") if isinstance(status.get("power"), dict) else None
    policies = spec.get("policies") if isinstance(spec.get("policies"), dict) else {}
    policy = policies.get("powercap")
    if not power:
        if spec.get("powerBudgetWatts") is None:
            return [_line("Power", "no budget (set spec.powerBudgetWatts and policies.powercap)")]
        waiting = (
            f"no power status yet (policies.powercap: {policy}; the controller writes it on its next pass)"
            if policy
            else "no policies.powercap set: nothing watches the budget"
        )
        return [_line("Power", f"budget {watts(spec.get('powerBudgetWatts'))}, {waiting}")]
    found = [_line("Power", _headline(power))]
    found.append(_line("Policy", str(power.get("policy") or policy or "-"), "  "))
    entries = [e for e in power.get("capped") or [] if isinstance(e, dict)]
    capped = _number(power.get("cappedGpus"))
    capped_count = int(capped) if capped is not None else len(entries)
    gpus = _number(power.get("gpus"))
    text = f"{capped_count} of {int(gpus)} capped" if gpus is not None else f"{capped_count} capped"
    if _number(power.get("capWatts")):
        text += f", {watts(power.get('capWatts'))} below their board limits in all"
    found.append(_line("GPUs", text, "  "))
    shortfall = _number(power.get("shortfallWatts"))
    if shortfall:
        text = f"{watts(shortfall)} over budget even with every GPU at its board minimum"
        found.append(_line("Shortfall", text, "  "))
    stale = [str(n)[:63] for n in power.get("staleNodes") or [] if isinstance(n, str)]
    if stale:
        shown = ", ".join(stale[:MAX_STALE_SHOWN])
        more = f" and {len(stale) - MAX_STALE_SHOWN} more" if len(stale) > MAX_STALE_SHOWN else ""
        text = f"{shown}{more} (no recent telemetry: counted at their limits)"
        found.append(_line("Stale nodes", text, "  "))
    updated = power.get("updatedAt")
    try:
        moment = parse_rfc3339(updated) if isinstance(updated, str) else None
    except ValueError:
        moment = None
    found.append(_line("Updated", f"{updated} ({age(moment, at)} ago)" if moment else "-", "  "))
    if entries:
        found.append("  Capped GPUs (lowest priority first):")
        headers = ["NODE", "GPU", "LIMIT", "BOARD MAX", "OF MAX", "OWNER", "PRIORITY"]
        found.append(_indent(table(_capped_rows(entries), headers), "    "))
        hidden = capped_count - min(len(entries), MAX_ROWS)
        if hidden > 0:
            found.append(f"    ... and {hidden} more (the status lists at most {MAX_ROWS})")
    return found


def wide_power(document: dict[str, Any]) -> str:
    """``get clusters -o wide``'s POWER column: '9,121/10,000 W', or the budget alone."""
    power = document.get("status", {}).get("power") or {}
    budget = power.get("budgetWatts", document.get("spec", {}).get("powerBudgetWatts"))
    draw = _number(power.get("drawWatts"))
    if _number(budget) is None:
        return "-"
    return f"{draw:,.0f}/{watts(budget)}" if draw is not None else watts(budget)


def wide_capped(document: dict[str, Any]) -> str:
    power = document.get("status", {}).get("power") or {}
    capped = _number(power.get("cappedGpus"))
    return "-" if capped is None else str(int(capped))


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())
