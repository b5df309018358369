"""``flotilla bench serve``: the engine and the one-at-a-time baseline, side by side."""

from __future__ import annotations

import argparse
import json

import pytest

from agents.runtimes.serve.bench import format_table
from agents.runtimes.serve.bench_cli import add_parser

TINY = '{"layers": 1, "hidden": 64, "intermediate": 128, "maxSeqLen": 64}'


def test_bench_serve_reports_engine_and_baseline_with_a_ratio_per_concurrency(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="flotilla bench")
    add_parser(parser.add_subparsers(dest="bench", required=True))
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        ["serve", "--device", "cpu", "--concurrency", "1,4", "--requests", "6", "--prompt-tokens", "8",
         "--max-tokens", "5", "--model-config", TINY, "--json", str(out)]
    )  # fmt: skip
    assert args.handler(args) == 0
    report = json.loads(out.read_text())
    assert [r["concurrency"] for r in report["results"]] == [1, 4]
    for result in report["results"]:
        for kind in ("engine", "baseline"):
            measured = result[kind]
            assert measured["requests"] == 6 and measured["tokens"] == 6 * 5
            assert measured["tokensPerSecond"] > 0 and measured["ttftMsP50"] > 0 and measured["tpotMsP99"] > 0
        assert result["throughputRatio"] > 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and '"throughputRatio"' in printed
    table = format_table(report).splitlines()
    assert len(table) == 1 + 2 * 2 and len({len(line) for line in table}) == 1  # aligned columns


def test_bench_serve_rejects_a_malformed_concurrency_list(capsys):
    parser = argparse.ArgumentParser(prog="flotilla bench")
    add_parser(parser.add_subparsers(dest="bench", required=True))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["serve", "--concurrency", "1,x"])
    assert exc.value.code == 2
    assert "--concurrency" in capsys.readouterr().err
