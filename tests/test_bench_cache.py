"""``flotilla bench cache``: its multi-turn workload, the trace it feeds the simulator, and one
quick run end to end on real replicas behind the router."""

from __future__ import annotations

import json
import statistics

import pytest

from agents.runtimes import plugin_choice
from agents.runtimes.serve.bench_cache_sim import Sent, prefix_cache, trace
from agents.runtimes.serve.bench_cache_workload import WorkloadSettings, generate
from agents.runtimes.serve.protocol import chat_prompt
from agents.runtimes.tokenizer import ByteTokenizer
from plugins.prefix_hash import block_hashes, model_seed
from plugins.sim import Turn

SETTINGS = WorkloadSettings(conversations=40, think_mean_s=6.0, single_share=0.3, seed=7)


def test_the_workload_is_the_same_for_the_same_seed_and_another_for_another():
    assert generate(SETTINGS) == generate(SETTINGS)
    other = generate(WorkloadSettings(conversations=40, think_mean_s=6.0, single_share=0.3, seed=8))
    assert other.system != generate(SETTINGS).system


def test_every_request_starts_with_the_one_system_prompt_of_the_promised_length():
    workload = generate(SETTINGS)
    assert abs(len(workload.system) - SETTINGS.system_tokens) <= 8
    prefix = chat_prompt([{"role": "system", "content": workload.system}])[: -len("<|assistant|>\n")]
    for conversation in workload.conversations:
        assert chat_prompt(workload.messages([], conversation.turns[0].user)).startswith(prefix)
    for single in workload.singles:
        assert chat_prompt(workload.messages([], single.user)).startswith(prefix)


def test_each_turn_repeats_the_conversation_so_far_and_grows():
    workload = generate(SETTINGS)
    conversation = workload.conversations[0]
    history: list[tuple[str, str]] = []
    prompts = []
    for turn in conversation.turns:
        prompts.append(chat_prompt(workload.messages(history, turn.user)))
        history.append((turn.user, "an answer"))
    assert SETTINGS.min_turns <= len(prompts) <= SETTINGS.max_turns
    for earlier, later in zip(prompts, prompts[1:], strict=False):
        # the previous prompt, its answer, then the new user message
        assert later.startswith(earlier + "an answer\n<|user|>\n")
    lengths = workload.prompt_tokens()
    assert len(lengths) == workload.requests


def test_think_times_follow_their_distribution_and_the_first_turn_has_none():
    workload = generate(SETTINGS)
    thinks = [turn.think_s for c in workload.conversations for turn in c.turns[1:]]
    assert all(c.turns[0].think_s == 0 for c in workload.conversations)
    assert all(t > 0 for t in thinks) and len(set(thinks)) == len(thinks)
    assert statistics.fmean(thinks) == pytest.approx(SETTINGS.think_mean_s, rel=0.25)
    assert max(thinks) > 1.5 * SETTINGS.think_mean_s  # a log-normal tail


def test_a_share_of_requests_are_single_shots_and_sessions_are_distinct():
    workload = generate(SETTINGS)
    assert len(workload.singles) / workload.requests == pytest.approx(SETTINGS.single_share, abs=0.01)
    sessions = [c.session for c in workload.conversations]
    assert len(set(sessions)) == len(sessions) == SETTINGS.conversations


def test_an_offered_rate_moves_the_open_loop_arrivals_and_nothing_else():
    unit = generate(SETTINGS)
    fast = unit.at_rate(4.0)
    assert fast.rate == 4.0 and fast.system == unit.system
    for a, b in zip(unit.conversations, fast.conversations, strict=True):
        assert b.start_s == pytest.approx(a.start_s / 4) and b.turns == a.turns
    for a, b in zip(unit.singles, fast.singles, strict=True):
        assert b.at_s == pytest.approx(a.at_s / 4) and b.user == a.user
    # open-loop: the conversation starts and single shots arrive at the offered rate between them
    span = max(fast.conversations[-1].start_s, fast.singles[-1].at_s)
    offered = len(fast.conversations) * SETTINGS.mean_turns + len(fast.singles)
    assert offered / span == pytest.approx(4.0, rel=0.3)
    with pytest.raises(ValueError, match="rate"):
        unit.at_rate(0)


def test_bad_settings_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="max_turns"):
        WorkloadSettings(min_turns=4, max_turns=3)
    with pytest.raises(ValueError, match="single_share"):
        WorkloadSettings(single_share=1.0)


def test_the_trace_names_the_blocks_the_engine_writes():
    prompt = chat_prompt([{"role": "system", "content": "s" * 40}, {"role": "user", "content": "hello"}])
    sent = Sent(3, "session-1", 1.5, prompt, "q" * 16, 16, "length")
    (request,) = trace([sent], "builtin:tiny-llama")
    ids = ByteTokenizer().encode(prompt)
    assert (request.id, request.arrival_s, request.session) == (3, 1.5, "session-1")
    assert (request.input_tokens, request.output_tokens) == (len(ids), 16)
    written = (len(ids) + 16 - 1) // 16
    expected = block_hashes(ids + [ord("q")] * 16, 16, seed=model_seed("builtin:tiny-llama"), limit=written)
    assert list(request.block_hashes) == expected


def test_an_answer_the_client_cannot_read_back_gets_names_of_its_own():
    prompt = "p" * 40  # 41 tokens with BOS; 32 generated, of which the text shows two for certain
    sent = Sent(0, None, 0.0, prompt, "ab\ufffdcd" + "q" * 27, 32, "length")
    (request,) = trace([sent], "builtin:tiny-llama")
    known = block_hashes(ByteTokenizer().encode(prompt + "ab"), 16, seed=model_seed("builtin:tiny-llama"))
    assert len(known) == 2 and len(request.block_hashes) == (41 + 32 - 1) // 16 == 4
    assert request.block_hashes[:2] == tuple(known)
    assert all(name < 0 for name in request.block_hashes[2:])  # never any other request's


def test_the_simulator_keeps_prefixes_as_each_plugin_says():
    def choice(eviction: str):
        return plugin_choice.resolve(
            "cache", {"plugin": "prefix-aware", "params": {"eviction": eviction}}, "cache"
        )

    assert prefix_cache(choice("none"), 100) is None
    lru, ttl = prefix_cache(choice("prefix-lru"), 100), prefix_cache(choice("session-ttl"), 100)
    turn = Turn("s", 4, (2.0,), 0.1, 0.0, 100)
    assert lru is not None and lru.pin_seconds is not None and lru.pin_seconds(turn) == 0
    assert ttl is not None and ttl.pin_seconds is not None and ttl.pin_seconds(turn) == pytest.approx(3.0)


@pytest.mark.slow
def test_a_quick_run_measures_every_configuration_against_round_robin(tmp_path, capsys):
    from cli.main import main

    path = tmp_path / "cache.json"
    assert main(["bench", "cache", "--quick", "--replicas", "2", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    out = capsys.readouterr().out
    assert "P90 VS RR" in out and "limits: CPU only" in out
    configurations = [r["configuration"] for r in report["results"]]
    assert configurations == [
        "round-robin + none",
        "least-loaded + prefix-lru",
        "prefix-aware + prefix-lru",
        "prefix-aware + session-ttl",
    ]
    for result in report["results"]:
        assert result["replicas"] == 2 and result["errors"] == 0 and result["completed"] == result["requests"]
        for key in ("ttftMsP50", "ttftMsP90", "throughputRps", "tokensPerSecond", "hitRate"):
            assert result[key] is not None, key
        for key in ("ttftMsP50", "ttftMsP90", "hitRate"):
            assert result["simulated"][key] is not None, key
        assert all(value is not None for value in result["ratios"].values())
    baseline, *cached = report["results"]
    assert baseline["hitRate"] == 0 and baseline["ratios"]["ttftP90"] == 1.0
    assert all(r["hitRate"] > 0 for r in cached)  # every request shares the system prompt
    assert report["profile"]["source"] == "measured" and report["goals"]["2"]["bestConfiguration"]
