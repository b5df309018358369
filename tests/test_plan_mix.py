"""``flotilla plan mix``: files in, a table or JSON out, exit codes 0 / 1 / 2. No server, no Django."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.plan_mix import EXIT_INPUT_ERROR, EXIT_OK, EXIT_PARTIAL, run

ROOT = Path(__file__).resolve().parent.parent


def document(**changes) -> dict:
    data = {
        "gpus": {
            "L4": {
                "pricePerHour": 0.8,
                "maxRequestsPerSecond": [[6.0, 2.0], [1.5, 0.0]],
                "available": 8,
                "powerWatts": 72,
            },
            "H100": {
                "pricePerHour": 4.0,
                "maxRequestsPerSecond": [[30.0, 12.0], [10.0, 4.0]],
                "powerWatts": 700,
            },
        },
        "workload": {"distribution": [[0.5, 0.2], [0.2, 0.1]], "requestsPerSecond": 20.0},
        "sliceFactor": 4,
    }
    return {**data, **changes}


def write(tmp_path: Path, data: dict, name: str = "input.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


def test_json_output_is_the_cost_optimal_mix(tmp_path, capsys):
    assert run(write(tmp_path, document()), output="json") == EXIT_OK
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["counts"] == {"L4": 4, "H100": 1}
    assert result["costPerHour"] == pytest.approx(7.2)
    assert len(result["assignment"]) == 16  # 4 buckets with traffic × slice factor 4
    assert set(result["assignment"][0]) == {"bucket", "slice", "gpu", "requestsPerSecond"}
    # Small enough to try every split of the slices (plugins.mixsolver.ENUMERATION_LIMIT).
    assert result["solver"] == "enumeration" and result["optimal"] is True
    assert result["shortfall"] is None
    assert result["powerWatts"] == pytest.approx(4 * 72 + 700)
    assert captured.err == ""


def test_table_output_lists_every_type_and_the_total(tmp_path, capsys):
    assert run(write(tmp_path, document())) == EXIT_OK
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "COUNT", "PRICE/H", "COST/H", "SHARE", "AVAILABLE"]
    l4, h100 = lines[1].split(), lines[2].split()
    # Several routings of the traffic cost the same; which one is returned is not specified.
    assert l4[:4] + l4[5:] == ["L4", "4", "$0.80", "$3.20", "8"]
    assert h100[:4] + h100[5:] == ["H100", "1", "$4.00", "$4.00", "-"]
    assert float(l4[4].rstrip("%")) + float(h100[4].rstrip("%")) == pytest.approx(100.0)
    assert "total: $7.20/h for 5 GPUs" in out
    assert "solver: enumeration, proven optimal" in out
    assert "power: 988 W" in out
    assert "shortfall" not in out


def test_yaml_input_and_stdin_work_too(tmp_path, capsys):
    assert run(write(tmp_path, document(), "input.yaml"), output="json") == EXIT_OK
    assert json.loads(capsys.readouterr().out)["costPerHour"] == pytest.approx(7.2)
    assert run("-", output="json", stdin=io.StringIO(json.dumps(document()))) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["counts"] == {"L4": 4, "H100": 1}


def test_yaml_output_is_the_same_document(tmp_path, capsys):
    path = write(tmp_path, document())
    assert run(path, output="yaml") == EXIT_OK
    as_yaml = yaml.safe_load(capsys.readouterr().out)
    assert run(path, output="json") == EXIT_OK
    assert as_yaml == json.loads(capsys.readouterr().out)


def test_the_slice_factor_defaults_to_four(tmp_path, capsys):
    data = document()
    del data["sliceFactor"]
    assert run(write(tmp_path, data), output="json") == EXIT_OK
    assert {a["slice"] for a in json.loads(capsys.readouterr().out)["assignment"]} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"gpus": {"H100": {"pricePerHour": 4.0, "maxRequestsPerSecond": [[30.0, 12.0, 1.0]]}}},
            "gpus.H100.maxRequestsPerSecond",
            ["H100", "1×3", "2×2"],
        ),
        (
            {"gpus": {"H100": {"maxRequestsPerSecond": [[30.0, 12.0], [10.0, 4.0]]}}},
            "gpus.H100.pricePerHour",
            ["Field required"],
        ),
        (
            {"workload": {"distribution": [[0.5, 0.2], [0.2, 0.2]], "requestsPerSecond": 20.0}},
            "workload.distribution",
            ["sum to 1.1"],
        ),
        (
            {
                "powerBudgetWatts": 500,
                "gpus": {"A": {"pricePerHour": 1, "maxRequestsPerSecond": [[1, 1], [1, 1]]}},
            },
            "gpus.A.powerWatts",
            ["power budget"],
        ),
    ],
)
def test_bad_input_exits_1_and_names_the_field(tmp_path, capsys, change, field, words):
    assert run(write(tmp_path, document(**change))) == EXIT_INPUT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {field}: ")
    assert "(fix: " in captured.err
    for word in words:
        assert word in captured.err


def test_unreadable_input_exits_1(tmp_path, capsys):
    assert run(str(tmp_path / "missing.json")) == EXIT_INPUT_ERROR
    assert "error: -f: " in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"gpus": {')
    assert run(str(broken)) == EXIT_INPUT_ERROR
    assert "error: input: not valid JSON" in capsys.readouterr().err
    assert run(write(tmp_path, document()), output="wide") == EXIT_INPUT_ERROR
    assert "error: -o: " in capsys.readouterr().err


def test_a_partial_mix_exits_2_and_prints_the_shortfall(tmp_path, capsys):
    # Only two GPUs of one type, each good for 10 req/s: 20 of 50 req/s.
    data = {
        "gpus": {"A100-80GB": {"pricePerHour": 2.0, "maxRequestsPerSecond": [[10.0]], "available": 2}},
        "workload": {"distribution": [[1.0]], "requestsPerSecond": 50.0},
        "sliceFactor": 5,
    }
    path = write(tmp_path, data)
    assert run(path) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "A100-80GB   2" in out
    assert "served: 20 of 50 req/s" in out
    assert "shortfall: serves 20.0 of 50.0 req/s; the rest needs about 3 more A100-80GB" in out

    assert run(path, output="json") == EXIT_PARTIAL
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["servedRequestsPerSecond"] == pytest.approx(20.0)
    assert "only 2 free" in result["shortfall"]
    assert captured.err.startswith("warning: partial mix: serves 20.0 of 50.0 req/s")


def test_a_power_budget_shows_in_the_table(tmp_path, capsys):
    assert run(write(tmp_path, document(powerBudgetWatts=800))) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "of the 800 W budget" in out
    assert "W power budget" in out.split("shortfall: ")[1]


def test_the_module_does_not_load_django():
    code = (
        "import sys, cli.plan_mix; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'celery')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
