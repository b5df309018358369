"""The ``flotilla`` command line: one way for a sub-command to say what runs it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from cli import main as cli_main
from cli.up import EXAMPLES


def leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable sub-command: its words on the command line, and its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield words, parser
    for group in groups:
        for name, child in group.choices.items():
            yield from leaves(child, (*words, name))


def test_every_sub_command_names_its_handler():
    commands = dict(leaves(cli_main.build_parser()))
    assert {("up",), ("plan",), ("bench", "schedulers"), ("token", "create"), ("agent",)} <= set(commands)
    for words, parser in commands.items():
        assert callable(parser.get_default("handler")), " ".join(words)


def test_main_runs_the_handler_and_turns_a_client_error_into_exit_1(monkeypatch, capsys):
    def refuse(args: argparse.Namespace, client: object) -> int:
        raise cli_main.ClientError("forbidden")

    monkeypatch.setattr(cli_main, "cmd_events", refuse)
    assert cli_main.main(["--server", "http://127.0.0.1:9", "events"]) == 1
    assert capsys.readouterr().err == "error: forbidden\n"


def test_plan_mix_needs_no_server(capsys):
    assert cli_main.main(["plan", "mix", "-f", "nowhere.json"]) != 0
    assert "nowhere.json" in capsys.readouterr().err


def test_up_applies_the_repositorys_examples():
    assert (EXAMPLES / "cluster.yaml").is_file()
