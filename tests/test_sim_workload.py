"""Request traces: arrival processes, length distributions, BurstGPT replay, Mélange buckets."""

from __future__ import annotations

import io
import random
import statistics

import pytest

from plugins.sim import (
    DEFAULT_BUCKETS,
    Buckets,
    LengthDist,
    Request,
    gamma,
    load_burstgpt,
    mixed_80_20,
    poisson,
    short_chat,
    summarisation,
)


def gaps(requests: list[Request]) -> list[float]:
    times = [0.0] + [r.arrival_s for r in requests]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_poisson_mean_gap_is_one_over_rate():
    requests = poisson(8.0, count=5000, seed=1)
    assert len(requests) == 5000
    assert statistics.mean(gaps(requests)) == pytest.approx(1 / 8.0, rel=0.1)
    assert statistics.pstdev(gaps(requests)) / statistics.mean(gaps(requests)) == pytest.approx(1.0, rel=0.1)
    assert [r.id for r in requests] == list(range(5000))
    assert all(b.arrival_s > a.arrival_s for a, b in zip(requests, requests[1:], strict=False))


def test_poisson_by_duration_stays_inside_it():
    requests = poisson(20.0, duration_s=50.0, seed=2)
    assert all(0 < r.arrival_s < 50.0 for r in requests)
    assert len(requests) == pytest.approx(1000, rel=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        poisson(1.0, duration_s=10.0, count=10)
    with pytest.raises(ValueError, match="exactly one"):
        poisson(1.0)
    with pytest.raises(ValueError, match="rate"):
        poisson(0.0, count=10)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_arrivals_have_the_requested_burstiness(cv: float):
    g = gaps(gamma(10.0, cv, count=20000, seed=0))
    assert statistics.mean(g) == pytest.approx(0.1, rel=0.05)
    assert statistics.pstdev(g) / statistics.mean(g) == pytest.approx(cv, rel=0.08)


def test_same_seed_at_another_rate_is_the_same_trace_compressed():
    dist = LengthDist.uniform(10, 1000)
    slow = poisson(2.0, count=200, inputs=dist, outputs=dist, seed=5)
    fast = poisson(4.0, count=200, inputs=dist, outputs=dist, seed=5)
    assert [(r.input_tokens, r.output_tokens) for r in slow] == [
        (r.input_tokens, r.output_tokens) for r in fast
    ]
    assert [r.arrival_s / 2 for r in slow] == pytest.approx([r.arrival_s for r in fast])
    other = poisson(2.0, count=200, inputs=dist, outputs=dist, seed=6)
    assert [r.input_tokens for r in other] != [r.input_tokens for r in slow]


def test_length_distributions():
    rng = random.Random(0)
    assert {LengthDist.fixed(7).sample(rng) for _ in range(50)} == {7}
    uniform = [LengthDist.uniform(3, 6).sample(rng) for _ in range(2000)]
    assert set(uniform) == {3, 4, 5, 6}
    wide = LengthDist.lognormal(300, 0.5, 1, 100_000)
    assert statistics.mean(wide.sample(rng) for _ in range(20000)) == pytest.approx(300, rel=0.03)
    clamped = [LengthDist.lognormal(300, 1.5, 50, 400).sample(rng) for _ in range(2000)]
    assert min(clamped) == 50 and max(clamped) == 400
    with pytest.raises(ValueError, match="lo <= hi"):
        LengthDist.uniform(10, 5)
    with pytest.raises(ValueError, match="positive"):
        LengthDist.fixed(0)


BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
100.0,ChatGPT,472,18,490,Conversation log
101.5,ChatGPT,1087,0,1087,Conversation log
102.0,GPT-4,300,250,550,Conversation log
104.0,ChatGPT,0,12,12,API log
110.0,ChatGPT,64,128,192,Conversation log
"""


def test_burstgpt_skips_failures_and_rescales_time(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text(BURSTGPT)
    requests = load_burstgpt(path)
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in requests] == [
        (0.0, 472, 18), (2.0, 300, 250), (4.0, 1, 12), (10.0, 64, 128),
    ]  # fmt: skip
    assert [r.id for r in requests] == [0, 1, 2, 3]
    twice_as_fast = load_burstgpt(str(path), time_scale=0.5)
    assert [r.arrival_s for r in twice_as_fast] == [0.0, 1.0, 2.0, 5.0]
    gpt4 = load_burstgpt(io.StringIO(BURSTGPT), model="GPT-4")
    assert [(r.arrival_s, r.input_tokens) for r in gpt4] == [(0.0, 300)]
    assert len(load_burstgpt(io.StringIO(BURSTGPT), limit=2)) == 2


def test_burstgpt_errors_name_the_line_and_column():
    bad = BURSTGPT.replace("110.0,ChatGPT,64,", "110.0,ChatGPT,lots,")
    with pytest.raises(ValueError, match=r"line 6: column 'Request tokens'"):
        load_burstgpt(io.StringIO(bad))
    with pytest.raises(ValueError, match=r"line 4: column 'Timestamp'"):
        load_burstgpt(io.StringIO(BURSTGPT.replace("102.0,GPT-4", "soon,GPT-4")))
    with pytest.raises(ValueError, match="'Response tokens' column"):
        load_burstgpt(io.StringIO("Timestamp,Model,Request tokens\n1,ChatGPT,5\n"))
    with pytest.raises(ValueError, match="time_scale"):
        load_burstgpt(io.StringIO(BURSTGPT), time_scale=0)


def test_buckets_index_and_histogram():
    buckets = DEFAULT_BUCKETS
    assert buckets.size == 12
    assert buckets.index(1, 1) == 0
    assert buckets.index(128, 64) == 0  # edges are inclusive upper bounds
    assert buckets.index(129, 64) == 3
    assert buckets.index(129, 65) == 4
    assert buckets.index(100_000, 100_000) == 11  # the last bucket takes the rest
    assert buckets.index(600, 2000) == 2 * 3 + 2
    requests = [
        Request(i, 0.0, n_in, n_out)
        for i, (n_in, n_out) in enumerate([(10, 10), (10, 20), (5000, 500), (9000, 9)])
    ]
    histogram = buckets.histogram(requests)
    assert sum(histogram) == pytest.approx(1.0)
    assert histogram[0] == 0.5 and histogram[3 * 3 + 0] == 0.25 and histogram[3 * 3 + 2] == 0.25
    assert buckets.histogram([]) == [0.0] * 12


def test_bucket_representatives_fall_inside_their_bucket():
    buckets = Buckets([100, 1000], [50, 500, 5000])
    for i in range(buckets.size):
        assert buckets.index(*buckets.representative(i)) == i
    assert buckets.representative(0) == (10, 7)  # geometric midpoints of 1..100 and 1..50
    with pytest.raises(ValueError, match="increasing"):
        Buckets([100, 100], [5])
    with pytest.raises(IndexError):
        buckets.representative(6)


def test_named_workloads_have_their_shapes():
    chat = short_chat(10.0, 60.0, seed=3)
    summaries = summarisation(10.0, 60.0, seed=3)
    mixed = mixed_80_20(10.0, 60.0, seed=3)
    assert len(chat) == pytest.approx(600, rel=0.15)
    assert statistics.median(r.input_tokens for r in chat) < 400
    assert all(2048 <= r.input_tokens <= 8192 and r.output_tokens <= 512 for r in summaries)
    long_share = sum(r.input_tokens >= 2048 for r in mixed) / len(mixed)
    assert long_share == pytest.approx(0.2, abs=0.05)
    assert mixed_80_20(10.0, 60.0, seed=3) == mixed  # deterministic
