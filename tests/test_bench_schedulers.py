"""``flotilla bench schedulers --trace``: a BurstGPT CSV sized for like the synthetic workloads,
then replayed on its own arrival times against every allocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import bench_schedulers
from cli.bench_schedulers import (
    balanced_routing,
    demand_of,
    fleet_of,
    render,
    replay_allocation,
    spec_for,
)
from cli.main import main
from common.specs import DeploymentSpec
from plugins.planning import profile_for
from plugins.sim import LengthDist, Request, gamma, load_trace, poisson, simulate, with_poisson_arrivals

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "burstgpt-sample.csv"
HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
# Kept rows at 10, 11, 13 and 14 s; the failures (0 response tokens) at 12 and 25 s are dropped,
# so the trace lasts 4 s, not 15.
SMALL = HEADER + (
    "10.0,ChatGPT,100,50,150,Conversation log\n"
    "11.0,GPT-4,600,300,900,API log\n"
    "12.0,ChatGPT,100,0,100,Conversation log\n"
    "13.0,ChatGPT,100,50,150,Conversation log\n"
    "14.0,ChatGPT,3000,100,3100,API log\n"
    "25.0,ChatGPT,10,0,10,Conversation log\n"
)
INPUTS = LengthDist.lognormal(512, 0.5, 16, 2048)
OUTPUTS = LengthDist.lognormal(128, 0.5, 8, 512)


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bench(*flags: str) -> int:
    return main(["bench", "schedulers", *flags])


def test_the_trace_workload_is_its_mean_rate_burstiness_and_length_histogram(tmp_path):
    trace = load_trace(write(tmp_path, SMALL))
    assert len(trace.requests) == 4
    assert trace.duration_s == 4.0
    assert trace.rate == 1.0  # requests / duration
    assert trace.cv == pytest.approx((2 / 9) ** 0.5 / (4 / 3))  # gaps 1, 2, 1
    assert trace.name == "trace trace.csv"
    fractions = spec_for(trace.requests, trace.rate, 3000.0, 100.0)["workload"]["histogram"]["fractions"]
    # DEFAULT_BUCKETS: inputs <=128, <=512, <=2048, more; outputs <=64, <=256, more.
    assert fractions == [[0.5, 0, 0], [0, 0, 0], [0, 0, 0.25], [0, 0.25, 0]]

    faster = load_trace(write(tmp_path, SMALL), time_scale=0.5)
    assert (faster.duration_s, faster.rate, faster.cv) == (2.0, 2.0, pytest.approx(trace.cv))
    assert faster.describe()["timeScale"] == 0.5


def test_the_shipped_sample_is_a_bursty_burstgpt_trace():
    lines = SAMPLE.read_text().splitlines()
    assert lines[0] + "\n" == HEADER
    assert 200 <= len(lines) - 1 <= 1000
    assert sum(line.split(",")[3] == "0" for line in lines[1:]) >= 3  # failures, to be dropped
    assert {line.split(",")[1] for line in lines[1:]} == {"ChatGPT", "GPT-4"}
    trace = load_trace(str(SAMPLE))
    assert trace.cv > 1.5
    assert len(load_trace(str(SAMPLE), model="GPT-4").requests) < len(trace.requests)


def test_replay_serves_the_trace_requests_themselves():
    requests = poisson(8.0, count=200, inputs=INPUTS, outputs=OUTPUTS, seed=4)
    demand = demand_of(DeploymentSpec.model_validate(spec_for(requests, 8.0, 1000.0, 100.0)))
    fleet = fleet_of(["H100"], 8)
    replayed = replay_allocation(requests, {"H100": 2}, demand, fleet)
    direct = simulate(requests, profile_for("H100", demand, fleet), instances=2)
    assert replayed["requests"] == 200
    assert replayed["sloAttainment"] == round(direct.attainment(1000.0, 100.0), 4)
    assert replayed["ttftP90Ms"] == round(direct.percentile("ttft", 90) * 1e3, 2)


def test_a_burstier_trace_at_the_same_mean_rate_misses_more_on_the_same_gpus():
    rate = 16.0
    smooth = poisson(rate, count=400, inputs=INPUTS, outputs=OUTPUTS, seed=3)
    bursty = gamma(rate, 4.0, count=400, inputs=INPUTS, outputs=OUTPUTS, seed=3)  # same lengths
    stretch = smooth[-1].arrival_s / bursty[-1].arrival_s  # exactly the same mean rate
    bursty = [Request(r.id, r.arrival_s * stretch, r.input_tokens, r.output_tokens) for r in bursty]
    demand = demand_of(DeploymentSpec.model_validate(spec_for(smooth, rate, 1000.0, 100.0)))
    fleet = fleet_of(["H100"], 8)
    calm = replay_allocation(smooth, {"H100": 1}, demand, fleet)
    bursts = replay_allocation(bursty, {"H100": 1}, demand, fleet)
    assert calm["sloAttainment"] == 1.0
    assert bursts["sloAttainment"] < 0.95
    assert bursts["ttftP90Ms"] > 3 * calm["ttftP90Ms"]


def test_poisson_arrivals_keep_the_lengths_and_the_mean_rate():
    bursty = gamma(10.0, 3.0, count=300, inputs=INPUTS, outputs=OUTPUTS, seed=1)
    smooth = with_poisson_arrivals(bursty)
    assert [(r.id, r.input_tokens, r.output_tokens) for r in smooth] == [
        (r.id, r.input_tokens, r.output_tokens) for r in bursty
    ]
    assert smooth[-1].arrival_s == pytest.approx(bursty[-1].arrival_s, rel=0.15)


def test_the_router_balances_the_busiest_type_and_still_sends_what_none_serves_at_the_slo(monkeypatch):
    # Per-bucket capacity of one replica at the SLO: the long bucket 1 only fits the H100,
    # bucket 2 fits neither (its requests still arrive and must go somewhere).
    rates = {"H100": [10.0, 4.0, 0.0], "L4": [2.0, 0.0, 0.0]}
    monkeypatch.setattr(bench_schedulers, "bucket_rate", lambda profile, demand, b: rates[profile][b])
    spec = spec_for([Request(0, 0.0, 100, 50)], 10.0, 1000.0, 100.0)
    spec["workload"]["histogram"]["fractions"] = [[0.5, 0.3, 0.2], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    demand = demand_of(DeploymentSpec.model_validate(spec))
    routing = balanced_routing({"H100": 1, "L4": 1}, {"H100": "H100", "L4": "L4"}, demand)
    assert routing["H100"][1] == 1.0 and routing["L4"][1] == 0.0
    # Bucket 0 is split so that both are equally busy: 0.75 + 5x/10 == 5(1-x)/2.
    assert routing["H100"][0] == pytest.approx(7 / 12)
    assert routing["L4"][0] == pytest.approx(5 / 12)
    assert routing["H100"][2] == routing["L4"][2] == 0.5
    assert not any(routing["H100"][3:]) and not any(routing["L4"][3:])


def test_the_table_and_json_carry_the_trace_group(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_schedulers, "solve_timing", lambda: FAKE_TIMING)
    out = tmp_path / "bench.json"
    rc = bench(
        *("--trace", str(SAMPLE), "--workloads", "trace", "--gpu-types", "H100,A10G"),
        *("--no-distserve", "--json", str(out)),
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "trace burstgpt-sample.csv: 578 requests over 41.3 s = 13.98 req/s mean, inter-arrival CV" in table
    assert "SLO MET  POISSON   REPLAY" in table
    assert "short chat" not in table
    document = json.loads(out.read_text())
    [group] = document["workloads"]
    assert group["workload"] == "trace burstgpt-sample.csv"
    assert group["trace"]["file"] == "burstgpt-sample.csv"
    assert group["trace"]["requests"] == 578
    assert group["trace"]["interArrivalCv"] > 1.5
    assert group["requestsPerSecond"] == pytest.approx(group["trace"]["requestsPerSecond"], abs=1e-4)
    policies = {r["policy"]: r for r in group["rows"]}
    assert {"only H100", "only A10G", "melange"} <= set(policies)
    for r in group["rows"]:
        if r["replicas"]:
            assert r["replay"]["requests"] == r["replayPoisson"]["requests"] == 578
            assert 0.0 <= r["replay"]["sloAttainment"] <= 1.0


def test_without_a_trace_the_table_is_as_before():
    document = {
        "workloads": [
            {
                "workload": "short chat",
                "requestsPerSecond": 100.0,
                "slo": {"ttftMs": 1000.0, "tpotMs": 100.0},
                "rows": [
                    {
                        "policy": "only H100",
                        "replicas": {"H100": 3},
                        "costPerHour": 13.5,
                        "sloAttainment": 1.0,
                        "note": "",
                    }
                ],  # fmt: skip
                "melangeSavingsVsBestSingle": None,
            }
        ],
        "melangeSolve": FAKE_TIMING,
    }
    table = render(document)
    assert "short chat: 100 req/s, SLO TTFT 1000 ms" in table
    assert "REPLAY" not in table and "POISSON" not in table


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        (
            None,
            ("--trace", "nowhere.csv"),
            "--trace nowhere.csv: no such file; give a BurstGPT CSV, e.g. --trace",
        ),
        ("Timestamp,Model,Request tokens\n1,ChatGPT,5\n", (), "no 'Response tokens' column"),
        (SMALL.replace("13.0", "soon"), (), "column 'Timestamp' must be a number, got 'soon'"),
        (HEADER, (), "no usable rows: the file has a header and no rows"),
        (HEADER + "1,ChatGPT,5,0,5,API log\n", (), "no usable rows: all rows have 0 response tokens"),
        (SMALL, ("--trace-model", "Claude"), "no row has Model 'Claude' (the file has ChatGPT, GPT-4)"),
        (SMALL, ("--trace-model", "GPT-4"), "1 usable request(s), all at one timestamp"),
        (SMALL, ("--time-scale", "0"), "--time-scale must be a positive number"),
    ],
)
def test_a_trace_that_cannot_be_used_is_a_clear_error(tmp_path, capsys, text, flags, message):
    path = write(tmp_path, text) if text is not None else None
    assert bench(*(("--trace", path) if path else ()), *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --")
    assert message in err


def test_wrong_columns_say_what_the_header_should_be(tmp_path, capsys):
    assert bench("--trace", write(tmp_path, "a,b\n1,2\n")) == 2
    assert "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--time-scale", "0.5"), "--time-scale and --trace-model apply to a trace: add --trace FILE.csv"),
        (("--trace-model", "GPT-4"), "--time-scale and --trace-model apply to a trace: add --trace FILE.csv"),
        (("--workloads", "trace"), "--workloads trace needs a trace to replay: add --trace FILE.csv"),
    ],
)
def test_trace_flags_without_a_trace_are_an_error(capsys, flags, message):
    assert bench(*flags) == 2
    assert message in capsys.readouterr().err


FAKE_TIMING = {
    "types": 8, "buckets": 64, "sliceFactor": 4, "secondsMax": 0.1, "secondsMin": 0.1,
    "solver": "milp", "optimal": True,
}  # fmt: skip
