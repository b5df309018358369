"""Print the schedulers' plans that a dry run returns for a Deployment, as one table.

One row per candidate policy (binpack, spread, melange, distserve when the
Deployment asks for disaggregation): GPUs by type, nodes, cost per hour and the
simulator's predicted P90 TTFT/TPOT and SLO attainment; ``*`` marks the policy
the Deployment's own scheduler setting would use.
"""

from __future__ import annotations

from typing import Any

HEADER = ("POLICY", "GPUS", "NODES", "COST/H", "TTFT P90", "TPOT P90", "SLO MET", "NOTE")


def _gpus(plan: dict[str, Any]) -> str:
    if plan.get("roles"):
        return ", ".join(
            f"{role}: {r['instances']}×{r['gpuType']}"
            + (f" tp{r['tensorParallel']}" if r["tensorParallel"] > 1 else "")
            for role, r in plan["roles"].items()
        )
    per = plan.get("gpusPerReplica", 1)
    parts = [f"{n}×{t}" + (f" (×{per} GPUs)" if per > 1 else "") for t, n in sorted(plan["replicas"].items())]
    return ", ".join(parts) or "none"


def _note(plan: dict[str, Any]) -> str:
    if plan.get("problem"):
        return plan["problem"]
    if not plan.get("supported", True):
        return "plan only: " + (plan.get("reason") or "")
    return plan.get("shortfall") or ""


def rows(schedule: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for plan in schedule.get("plans", []):
        name = plan["policy"] + (" *" if plan["policy"] == schedule.get("chosen") else "")
        if plan.get("problem"):
            out.append((name, "-", "-", "-", "-", "-", "-", _note(plan)))
            continue
        predicted = plan.get("predicted") or {}
        nodes = len({n["node"] for n in plan.get("nodes", [])}) if plan.get("nodes") is not None else "-"
        out.append(
            (
                name,
                _gpus(plan),
                str(nodes),
                f"${plan.get('costPerHour', 0):.2f}",
                f"{predicted['ttftP90Ms']:.0f} ms" if predicted.get("ttftP90Ms") is not None else "-",
                f"{predicted['tpotP90Ms']:.1f} ms" if predicted.get("tpotP90Ms") is not None else "-",
                f"{predicted['sloAttainment'] * 100:.1f}%" if "sloAttainment" in predicted else "-",
                _note(plan),
            )
        )
    return out


def render(schedule: dict[str, Any]) -> str:
    table = [HEADER, *rows(schedule)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in table
    ]
    chosen = schedule.get("chosen")
    lines.append(
        f"* = the policy this Deployment uses ({chosen})" if chosen else "no scheduler policy resolves"
    )
    return "\n".join(line.rstrip() for line in lines)
