"""The ``flotilla`` command line.

Client commands talk to the API over HTTP and never load Django; ``up`` and
``bench`` start processes of their own. Every sub-command names its handler with
``set_defaults(handler=...)``, a function of the parsed arguments, and ``main`` calls it.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from agents.cli import add_agent_parser
from cli import output
from cli.bench import add_bench_parser
from cli.documents import read_files
from cli.profile import add_profile_parser
from cli.up import add_up_parser
from common.client import Client, ClientError
from common.specs import KINDS, kind_for

Handler = Callable[[argparse.Namespace], int]


def with_client(command: Callable[[argparse.Namespace, Client], int]) -> Handler:
    """The handler of a command that talks to the API: a Client for --server and --token,
    closed when the command is done."""

    @functools.wraps(command)
    def handler(args: argparse.Namespace) -> int:
        client = Client(args.server, args.token)
        try:
            return command(args, client)
        finally:
            client.close()

    return handler


def resolve_kind(word: str) -> Any:
    info = kind_for(word)
    if info is None:
        raise ClientError(
            f"unknown kind {word!r}; use one of: " + ", ".join(info.plural for info in KINDS.values())
        )
    return info


def print_diff(changes: list[dict[str, Any]]) -> None:
    for change in changes:
        if change["op"] == "add":
            print(f"    + {change['path']}: {change['new']!r}")
        elif change["op"] == "remove":
            print(f"    - {change['path']}: {change['old']!r}")
        else:
            print(f"    ~ {change['path']}: {change['old']!r} -> {change['new']!r}")


def cmd_apply(args: argparse.Namespace, client: Client) -> int:
    result = client.apply(read_files(args.filename), dry_run=args.dry_run)
    if getattr(args, "output", None) in ("yaml", "json"):
        print(output.dump(result, args.output))
        return 0
    suffix = " (dry run)" if args.dry_run else ""
    for item in result["results"]:
        print(f"{item['kind'].lower()}/{item['name']} {item['action']}{suffix}")
        if args.dry_run and item["action"] != "unchanged":
            print_diff(item["diff"])
        if item.get("schedule"):
            from cli.plan_table import render

            print("  scheduling:")
            print("\n".join("    " + line for line in render(item["schedule"]).splitlines()))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """``plan mix`` solves offline; any other plan is an apply with --dry-run."""
    if args.what == "mix":
        from cli import plan_mix

        return plan_mix.run(args.filename[0], output=args.output, time_limit_s=args.time_limit)
    return with_client(cmd_apply)(args)


def cmd_get(args: argparse.Namespace, client: Client) -> int:
    info = resolve_kind(args.kind)
    if args.name:
        document = client.get(info.plural, args.name)
        document.pop("_status", None)
        if args.output in ("yaml", "json"):
            print(output.dump(document, args.output))
        else:
            print(output.resource_table(info.kind, [document], wide=args.output == "wide"))
        return 0
    listing = client.list(info.plural, labelSelector=args.selector)
    items = listing["items"]
    if args.output in ("yaml", "json"):
        # kind: List, as kubectl prints it, so the output can be applied again.
        print(output.dump({"apiVersion": "flotilla.dev/v1", "kind": "List", "items": items}, args.output))
    elif items:
        print(output.resource_table(info.kind, items, wide=args.output == "wide"))
    elif not args.watch:
        print(f"No {info.plural} found.")
    if args.watch:
        since = listing["metadata"]["resourceVersion"]
        while True:
            result = client.watch(info.plural, since, 30, labelSelector=args.selector)
            since = result["resourceVersion"]
            for event in result["events"]:
                line = output.resource_table(info.kind, [event["object"]], wide=args.output == "wide")
                print(f"{event['type']:<9}" + line.splitlines()[1])
    return 0


def cmd_describe(args: argparse.Namespace, client: Client) -> int:
    info = resolve_kind(args.kind)
    document = client.get(info.plural, args.name)
    events = client.events(info.plural, args.name, limit=20)["items"]
    print(output.describe(document, events))
    return 0


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    info = resolve_kind(args.kind)
    result = client.delete(info.plural, args.name)
    ref = f"{info.kind.lower()}/{args.name}"
    if result["_status"] == 202:
        print(f"{ref} deleting (waiting for its workloads to stop)")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                client.get(info.plural, args.name)
            except ClientError as exc:
                if exc.status == 404:
                    break
                raise
            time.sleep(0.5)
        else:
            raise ClientError(
                f"{ref} still exists after {args.timeout}s; "
                f"see `flotilla describe {info.kind.lower()} {args.name}`"
            )
    print(f"{ref} deleted")
    return 0


def cmd_events(args: argparse.Namespace, client: Client) -> int:
    if args.kind and args.name:
        info = resolve_kind(args.kind)
        items = client.events(info.plural, args.name, args.limit)["items"]
    else:
        items = client.events(limit=args.limit)["items"]
    print(output.events_table(items, with_object=not args.name) if items else "No events.")
    return 0


def cmd_logs(args: argparse.Namespace, client: Client) -> int:
    kind, _, name = args.target.partition("/")
    if not name:
        kind, name = "workload", kind
    if resolve_kind(kind).kind != "Workload":
        raise ClientError("logs are kept for workloads: flotilla logs workload/NAME")
    since = 0
    while True:
        params = {"since": since}
        if args.follow:
            params.update(follow="true", timeoutSeconds=25)
        result = client.request("GET", f"/api/v1/workloads/{name}/logs", params=params, timeout=45)
        for chunk in result["chunks"]:
            sys.stdout.write(chunk["text"])
        sys.stdout.flush()
        since = result["next"]
        if not args.follow and len(result["chunks"]) < 200:  # a short page is the end
            return 0


def cmd_plugins(args: argparse.Namespace, client: Client) -> int:
    items = client.request("GET", "/api/v1/plugins")["items"]
    if args.output in ("yaml", "json"):
        print(output.dump(items, args.output))
        return 0
    rows = [
        [
            p["kind"],
            p["name"],
            ", ".join(p["paramsSchema"].get("properties", {})) or "-",
            p["description"],
        ]
        for p in sorted(items, key=lambda p: (p["kind"], p["name"]))
    ]
    print(output.table(rows, ["KIND", "NAME", "PARAMS", "DESCRIPTION"]))
    return 0


def cmd_token(args: argparse.Namespace, client: Client) -> int:
    result = client.request(
        "POST",
        "/api/v1/tokens",
        json={"name": args.name or f"{args.role}-token", "role": args.role},
    )
    print(f"token/{result['name']} created (role {result['role']}, prefix {result['prefix']})")
    print(result["token"])
    print("Store it now: it is not shown again.", file=sys.stderr)
    return 0


def cmd_user(args: argparse.Namespace, client: Client) -> int:
    result = client.request(
        "POST", "/api/v1/users", json={"name": args.name, "role": args.role, "reset": args.reset}
    )
    print(f"user/{result['name']} {'reset' if args.reset else 'created'} (role {result['role']})")
    print(f"password: {result['password']}")
    print("Store it now: it is not shown again. Log in at the dashboard's /login/.", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flotilla", description="Declarative control plane for GPU fleets.")
    parser.add_argument(
        "--server", help="API URL (default: FLOTILLA_SERVER, config.yml, http://127.0.0.1:8000)"
    )
    parser.add_argument("--token", help="API token (default: FLOTILLA_TOKEN, then config.yml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_up_parser(sub)

    apply = sub.add_parser("apply", help="create or update resources from YAML/JSON")
    apply.add_argument(
        "-f", "--filename", action="append", required=True, help="file, directory or - (repeatable)"
    )
    apply.add_argument("--dry-run", action="store_true", help="show the plan and diff; change nothing")
    apply.set_defaults(handler=with_client(cmd_apply))

    plan = sub.add_parser(
        "plan",
        help="show what apply would do: diffs and each scheduler's placement, cost and predicted latency; "
        "`plan mix` solves the GPU-mix buying question offline",
    )
    plan.add_argument("what", nargs="?", choices=["mix"], help="mix: the cost-optimal GPU mix (no server)")
    plan.add_argument("-f", "--filename", action="append", required=True, help="file, directory or -")
    plan.add_argument("-o", "--output", choices=["yaml", "json", "table"], default="table")
    plan.add_argument("--time-limit", type=float, default=1.0, help="plan mix: MILP time limit in seconds")
    plan.set_defaults(dry_run=True, handler=cmd_plan)

    get = sub.add_parser("get", help="list resources or show one")
    get.add_argument("kind")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=["yaml", "json", "wide"])
    get.add_argument("-l", "--selector", help="label selector, k=v[,k=v]")
    get.add_argument("-w", "--watch", action="store_true", help="after listing, print changes as they happen")
    get.set_defaults(handler=with_client(cmd_get))

    describe = sub.add_parser("describe", help="spec, status, conditions and recent events of one object")
    describe.add_argument("kind")
    describe.add_argument("name")
    describe.set_defaults(handler=with_client(cmd_describe))

    delete = sub.add_parser("delete", help="delete an object (its workloads go first)")
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.add_argument("--wait", action="store_true", help="wait until it is gone")
    delete.add_argument("--timeout", type=float, default=60.0)
    delete.set_defaults(handler=with_client(cmd_delete))

    events = sub.add_parser("events", help="recent events, for everything or one object")
    events.add_argument("kind", nargs="?")
    events.add_argument("name", nargs="?")
    events.add_argument("--limit", type=int, default=50)
    events.set_defaults(handler=with_client(cmd_events))

    logs = sub.add_parser("logs", help="print a workload's output (shipped by its agent)")
    logs.add_argument("target", help="workload/NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.set_defaults(handler=with_client(cmd_logs))

    plugins = sub.add_parser("plugins", help="installed plugins by kind, with their parameters")
    plugins.add_argument("-o", "--output", choices=["yaml", "json"])
    plugins.set_defaults(handler=with_client(cmd_plugins))

    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token; it is printed once")
    create.add_argument("--role", choices=["admin", "operator", "viewer", "agent"], default="viewer")
    create.add_argument("--name")
    create.set_defaults(handler=with_client(cmd_token))

    user = sub.add_parser("user", help="manage dashboard users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    user_create = user_sub.add_parser("create", help="create a user; its password is printed once")
    user_create.add_argument("name")
    user_create.add_argument("--role", choices=["admin", "operator", "viewer"], default="viewer")
    user_create.add_argument(
        "--reset", action="store_true", help="set a new password (and role) if it exists"
    )
    user_create.set_defaults(handler=with_client(cmd_user))

    add_agent_parser(sub)
    add_bench_parser(sub)
    add_profile_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ClientError as exc:
        print(str(exc) if str(exc).startswith("error:") else f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
