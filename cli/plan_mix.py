"""``flotilla plan mix``: which GPUs to buy (or rent) to serve a workload at the SLO, cheapest.

It answers the operator's buying question directly with the Mélange solver
(``plugins.mixsolver``): given, per GPU type, its price and the highest request rate ONE GPU
sustains at the SLO on each (input length × output length) bucket, and the workload's
histogram over those buckets, it prints the cost-optimal count per type. It runs locally
and never loads Django or talks to a server, so it works before there is a cluster.

Usage (wired into ``flotilla`` by ``cli.main``)::

    flotilla plan mix -f input.json [-o json] [--time-limit S]

``-f -`` reads stdin. The input is JSON (YAML is accepted too). Example, with two input
buckets (rows) × two output buckets (columns)::

    {
      "gpus": {
        "L4":   {"pricePerHour": 0.8, "maxRequestsPerSecond": [[6.0, 2.0], [1.5, 0.0]],
                 "available": 8, "powerWatts": 72},
        "H100": {"pricePerHour": 4.0, "maxRequestsPerSecond": [[30.0, 12.0], [10.0, 4.0]],
                 "powerWatts": 700}
      },
      "workload": {"distribution": [[0.5, 0.2], [0.2, 0.1]], "requestsPerSecond": 20.0},
      "sliceFactor": 4,
      "powerBudgetWatts": 5000
    }

``maxRequestsPerSecond`` (0: cannot serve that bucket at the SLO) and ``distribution`` (the
fraction of requests per bucket, summing to 1) must have the same shape. ``sliceFactor``
(default 4) cuts each bucket's traffic into that many slices that may go to different
types; ``available`` (default unlimited) and ``powerBudgetWatts`` are optional limits.

Output: a table (one row per GPU type, then the total cost, the solver and whether the mix
is proven optimal, the power draw, and any shortfall), or with ``-o json`` (or ``-o yaml``)
the document ``{"counts", "costPerHour", "assignment", "solver", "optimal", "servedRequestsPerSecond",
"powerWatts", "shortfall"}``.

Exit status: 0 when the mix serves the whole workload; 2 when ``available`` or the power
budget only allow a partial mix (the best one is still printed, with the shortfall, so
scripts can tell "buy more" from "bad input"); 1 on input errors, with
``error: <field>: <message> (fix: ...)`` on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from cli.output import table
from plugins.mixsolver import MixError, MixProblem, MixSolution, problem_from_json, solve

EXIT_OK = 0
EXIT_INPUT_ERROR = 1
EXIT_PARTIAL = 2


def _load(path: str, stdin: TextIO) -> Any:
    """The input document; JSON first (its errors are the clearer ones), then YAML."""
    if path == "-":
        text = stdin.read()
    else:
        file = Path(path)
        if not file.is_file():
            raise MixError("-f", f"{path} does not exist or is not a file", "give the path of the input JSON")
        text = file.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_error:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            return data
        raise MixError(
            "input",
            f"not valid JSON: {json_error}",
            "give a JSON document {gpus, workload, sliceFactor}",
        ) from None


def _table(problem: MixProblem, solution: MixSolution) -> str:
    served_by: dict[str, float] = {gpu.name: 0.0 for gpu in problem.gpus}
    for item in solution.assignment:
        served_by[item.gpu] += item.requests_per_second
    total_rps = problem.requests_per_second
    rows = []
    for gpu in problem.gpus:
        count = solution.counts[gpu.name]
        share = served_by[gpu.name] / total_rps if total_rps > 0 else 0.0
        rows.append(
            [
                gpu.name,
                str(count),
                f"${gpu.price_per_hour:.2f}",
                f"${count * gpu.price_per_hour:.2f}",
                f"{share:.1%}",
                "-" if gpu.available is None else str(gpu.available),
            ]
        )
    lines = [table(rows, ["TYPE", "COUNT", "PRICE/H", "COST/H", "SHARE", "AVAILABLE"]), ""]
    gpus = sum(solution.counts.values())
    lines.append(f"total: ${solution.cost_per_hour:.2f}/h for {gpus} GPU{'s' if gpus != 1 else ''}")
    if solution.solver == "greedy":
        verdict = "greedy fallback: an upper bound, not proven optimal"
    elif solution.optimal:
        verdict = f"{solution.solver}, proven optimal"
    else:
        verdict = "milp, best mix found within the time limit, not proven optimal"
    lines.append(f"solver: {verdict}")
    if solution.power_watts is not None:
        power = f"power: {solution.power_watts:.0f} W"
        if problem.power_budget_watts is not None:
            power += f" of the {problem.power_budget_watts:.0f} W budget"
        lines.append(power)
    lines.append(f"served: {solution.served_rps:.4g} of {total_rps:.4g} req/s")
    if solution.shortfall:
        lines.append(f"shortfall: {solution.shortfall}")
    return "\n".join(lines)


def run(
    path: str,
    output: str = "table",
    time_limit_s: float = 1.0,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Read the input at ``path`` ("-": stdin), solve, print; return the exit status.

    ``output`` is "table", "json" or "yaml" (the JSON document, as YAML). The streams
    default to the ``sys`` ones at call time (not at import time), so that test capture and
    redirection work.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    stdin = stdin or sys.stdin
    try:
        if output not in ("table", "json", "yaml"):
            fix = "use -o json or -o yaml, or leave -o out for a table"
            raise MixError("-o", f"unknown output format {output!r}", fix)
        if not time_limit_s > 0:
            raise MixError("--time-limit", f"is {time_limit_s}", "give a number of seconds > 0")
        problem = problem_from_json(_load(path, stdin))
        solution = solve(problem, time_limit_s=time_limit_s)
    except MixError as error:
        print(f"error: {error}", file=stderr)
        return EXIT_INPUT_ERROR
    if output in ("json", "yaml"):
        document = solution.to_dict()
        text = (
            json.dumps(document, indent=2) if output == "json" else yaml.safe_dump(document, sort_keys=False)
        )
        print(text.rstrip("\n"), file=stdout)
        if solution.shortfall:
            print(f"warning: partial mix: {solution.shortfall}", file=stderr)
    else:
        print(_table(problem, solution), file=stdout)
    return EXIT_PARTIAL if solution.shortfall else EXIT_OK
