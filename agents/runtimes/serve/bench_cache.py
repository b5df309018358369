"""``flotilla bench cache``: prefix caching, session pins and prefix-aware routing against a
plain round-robin balancer without a cache, on real replicas behind the real router.

For each replica count, every configuration serves the same multi-turn workload
(``bench_cache_workload``: same seed, same open-loop arrival schedule) on fresh replica
processes and a fresh router (``bench_cache_fleet``). Requests stream through the router;
TTFT is the time from sending a request to its first chunk with content, as a client sees
it. Conversation starts and single shots arrive open-loop at a fixed offered rate, so the
configurations are offered the same load; within a conversation each turn is sent a think
time after the previous answer ended (closed loop). Hit rates come from the replicas' own
``/stats`` (``prefixCache``: hit tokens over prompt tokens).

The offered rate, unless given, is ``--load`` times what the replicas could serve one
request at a time without a cache: ``parallel / service``, where ``service`` is the fitted
profile's prefill of the mean prompt plus its decode steps, and ``parallel`` the replicas
that can compute at once (on a CPU host, no more than its cores: every replica runs one
torch thread). The profile is measured here, before any replica starts, with one thread
(``profiling.measure``), and the simulator replays each configuration's own trace with it
(``bench_cache_sim``), so its TTFT stands beside the measured one.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from agents.runtimes import plugin_choice
from agents.runtimes.serve import bench_cache_sim
from agents.runtimes.serve.bench_cache_fleet import fleet
from agents.runtimes.serve.bench_cache_sim import Sent
from agents.runtimes.serve.bench_cache_workload import Workload, WorkloadSettings, generate
from agents.runtimes.serve.metrics import percentile
from agents.runtimes.serve.protocol import chat_prompt

Progress = Callable[[str], None]
BLOCK_SIZE = bench_cache_sim.BLOCK_SIZE
REQUEST_TIMEOUT_S = 300.0
# (label, the cache section every replica and the router get); the first is the baseline.
CONFIGURATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("round-robin + none", {"plugin": "round-robin", "params": {"eviction": "none"}}),
    ("least-loaded + prefix-lru", {"plugin": "least-loaded", "params": {"eviction": "prefix-lru"}}),
    ("prefix-aware + prefix-lru", {"plugin": "prefix-aware", "params": {"eviction": "prefix-lru"}}),
    ("prefix-aware + session-ttl", {"plugin": "prefix-aware", "params": {"eviction": "session-ttl"}}),
)
# The KV cache holds this many of the workload's longest sequences: enough for a few to run
# at once, too little to keep every live conversation between its turns, so what eviction
# keeps decides hits (the point of the comparison).
KV_SEQUENCES = 2
QUICK_WORKLOAD = WorkloadSettings(
    conversations=5, min_turns=2, max_turns=3, system_tokens=256, user_tokens=32, answer_tokens=16,
    think_mean_s=1.0,
)  # fmt: skip


@dataclass(frozen=True)
class BenchSettings:
    """What one ``flotilla bench cache`` run does."""

    replicas: tuple[int, ...] = (2, 4)
    device: str = "cpu"
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    load: float = 0.5
    rate: float | None = None  # offered requests/s; None: from --load
    kv_blocks: int | None = None  # per replica; None: KV_SEQUENCES of the longest sequence
    max_batch: int = 8
    max_seq_len: int = 2048
    model_source: str = "builtin:tiny-llama"
    quick: bool = False

    @property
    def model(self) -> dict[str, Any]:
        return {"source": self.model_source, "config": {"maxSeqLen": self.max_seq_len}}


@dataclass
class Sample:
    """One request of the run: what was sent and how it fared (seconds from the run's start)."""

    sent: Sent
    kind: str  # turn | single
    turn: int  # the turn's index in its conversation (0 for a single shot)
    ttft_s: float | None = None
    e2e_s: float | None = None
    error: str | None = None


def stream_chat(url: str, body: dict[str, Any]) -> tuple[float | None, str, str | None, str | None]:
    """POST a streaming chat request; (seconds to the first content chunk, the answer, the
    finish reason, an error or None)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_S)
    started = time.monotonic()
    first: float | None = None
    text, reason = [], None
    try:
        payload = json.dumps(body).encode()
        connection.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return None, "", None, f"HTTP {response.status}: {response.read()[:200]!r}"
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                break
            choice = json.loads(data)["choices"][0]
            content = choice.get("delta", {}).get("content")
            if content:
                if first is None:
                    first = time.monotonic() - started
                text.append(content)
            reason = choice.get("finish_reason") or reason
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return first, "".join(text), reason, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return first, "".join(text), reason, None


def drive(workload: Workload, router: str, answer_tokens: int) -> list[Sample]:
    """Send the whole workload through ``router`` on its schedule; every request's Sample."""
    samples: list[Sample] = []
    lock = threading.Lock()
    counter = iter(range(1 << 30))
    origin = time.monotonic() + 0.5

    def send(messages: list[dict[str, str]], session: str | None, kind: str, turn: int) -> Sample:
        body: dict[str, Any] = {"model": "bench", "messages": messages, "max_tokens": answer_tokens,
                                "temperature": 0, "stream": True}  # fmt: skip
        if session is not None:
            body["user"] = session
        with lock:
            index = next(counter)
        sent_s = time.monotonic() - origin
        ttft, answer, reason, error = stream_chat(router, body)
        e2e = time.monotonic() - origin - sent_s
        sent = Sent(index, session, sent_s, chat_prompt(messages), answer, answer_tokens, reason)
        sample = Sample(sent, kind, turn, ttft, e2e if error is None else None, error)
        with lock:
            samples.append(sample)
        return sample

    def wait_until(at_s: float) -> None:
        delay = origin + at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def conversation(index: int) -> None:
        talk = workload.conversations[index]
        wait_until(talk.start_s)
        history: list[tuple[str, str]] = []
        for k, turn in enumerate(talk.turns):
            if k:
                time.sleep(turn.think_s)
            sample = send(workload.messages(history, turn.user), talk.session, "turn", k)
            if sample.error is not None:
                return  # the rest of the conversation would repeat an answer it never got
            history.append((turn.user, sample.sent.answer))

    def single(index: int) -> None:
        shot = workload.singles[index]
        wait_until(shot.at_s)
        send(workload.messages([], shot.user), None, "single", 0)

    threads = [
        threading.Thread(target=conversation, args=(i,), daemon=True)
        for i in range(len(workload.conversations))
    ]
    threads += [threading.Thread(target=single, args=(i,), daemon=True) for i in range(len(workload.singles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(samples, key=lambda s: s.sent.sent_s)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)


def _prefix_delta(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int] | None:
    """The replicas' prefixCache counters over the run, summed; None when they report none."""
    keys = ("hits", "misses", "hitTokens", "promptTokens", "evictions", "pinsBroken")
    if not all("prefixCache" in stats for stats in after):
        return None
    total = dict.fromkeys(keys, 0)
    for old, new in zip(before, after, strict=True):
        for key in keys:
            total[key] += int(new["prefixCache"].get(key, 0)) - int(old.get("prefixCache", {}).get(key, 0))
    return total


def measured_summary(
    samples: list[Sample], before: list[dict[str, Any]], after: list[dict[str, Any]], reuses: bool
) -> dict[str, Any]:
    """P50/P90 TTFT, throughput and hit rate of one configuration's run."""
    done = [s for s in samples if s.error is None and s.ttft_s is not None and s.e2e_s is not None]
    ttfts = [s.ttft_s for s in done if s.ttft_s is not None]
    follow_ups = [s.ttft_s for s in done if s.kind == "turn" and s.turn > 0 and s.ttft_s is not None]
    span = max((s.sent.sent_s + (s.e2e_s or 0.0) for s in done), default=0.0) - min(
        (s.sent.sent_s for s in samples), default=0.0
    )
    generated = sum(int(a.get("generatedTokensTotal", 0)) - int(b.get("generatedTokensTotal", 0))
                    for b, a in zip(before, after, strict=True))  # fmt: skip
    prefix = _prefix_delta(before, after)
    if prefix is not None and prefix["promptTokens"]:
        hit_rate: float | None = round(prefix["hitTokens"] / prefix["promptTokens"], 4)
    else:
        hit_rate = 0.0 if not reuses else None
    errors = [s.error for s in samples if s.error is not None]
    return {
        "requests": len(samples),
        "completed": len(done),
        "errors": len(errors),
        "firstError": errors[0] if errors else None,
        "ttftMsP50": _ms(percentile(ttfts, 50)),
        "ttftMsP90": _ms(percentile(ttfts, 90)),
        "followUpTtftMsP90": _ms(percentile(follow_ups, 90)),
        "durationS": round(span, 2),
        "throughputRps": round(len(done) / span, 3) if span > 0 else None,
        "tokensPerSecond": round(generated / span, 1) if span > 0 else None,
        "hitRate": hit_rate,
        "prefixCache": prefix,
    }


def fit_profile(settings: BenchSettings, longest: int, kv_blocks: int, say: Progress) -> Any:
    """The engine measured into a simulator profile, on this device with one torch thread, over
    the prompt and context lengths the workload reaches (``profiling.measure``)."""
    from agents.runtimes.serve import profiling

    target = profiling.Target.build(settings.model, settings.device, threads=1, max_batch=settings.max_batch,
                                    kv_blocks=kv_blocks)  # fmt: skip
    top = min(longest, target.config.maxSeqLen - 8)
    prompts = sorted({16, 64, *(max(1, round(top * f)) for f in (0.25, 0.5, 0.75, 1.0))})
    batches = sorted({1, 2, max(1, settings.max_batch // 2), settings.max_batch})
    contexts = sorted({32, *(max(16, round(top * f) - 8) for f in (0.33, 0.66, 1.0))})
    repeats, passes = (2, 1) if settings.quick else (3, 2)
    grid = profiling.Grid(tuple(prompts), tuple(batches), tuple(contexts), repeats, passes)
    label = "CPU" if settings.device == "cpu" else "GPU"
    return profiling.measure(target, label, grid, power_watts=0.0, progress=say)


def service_seconds(profile: Any, workload: Workload) -> float:
    """One mean request alone on one replica without a cache: its prefill, then its decode steps."""
    prompts = workload.prompt_tokens()
    mean = statistics.fmean(prompts)
    out = workload.settings.answer_tokens
    decode = sum(profile.decode_ms(1, round(mean + k)) for k in range(1, out))
    return (profile.prefill_ms(round(mean)) + decode) / 1e3


def parallel_replicas(replicas: int, device: str) -> int:
    """Replicas that can compute at the same time: on a CPU host, one per core at most."""
    return min(replicas, os.cpu_count() or 1) if device == "cpu" else replicas


def ratios(baseline: dict[str, Any], result: dict[str, Any]) -> dict[str, float | None]:
    """Each figure against the baseline's: TTFT as baseline / this (above 1: faster), throughput
    as this / baseline (1: the same offered load completed as fast)."""

    def divide(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {
        "ttftP50": divide(baseline["ttftMsP50"], result["ttftMsP50"]),
        "ttftP90": divide(baseline["ttftMsP90"], result["ttftMsP90"]),
        "throughput": divide(result["throughputRps"], baseline["throughputRps"]),
        "simTtftP90": divide(baseline["simulated"]["ttftMsP90"], result["simulated"]["ttftMsP90"]),
    }


def run_bench(settings: BenchSettings, say: Progress) -> dict[str, Any]:
    """Every configuration on every replica count; the JSON-ready report."""
    import torch

    started = time.monotonic()
    base = generate(settings.workload)
    answer = settings.workload.answer_tokens
    longest = base.longest_prompt_tokens() + answer
    worst = base.longest_prompt_tokens(3 * answer) + answer  # answers that come back as U+FFFD triple
    if worst >= settings.max_seq_len:
        raise ValueError(
            f"the workload's longest turn can reach {worst} tokens, past the model's maxSeqLen "
            f"({settings.max_seq_len}); use fewer --max-turns or shorter messages"
        )
    kv_blocks = settings.kv_blocks or KV_SEQUENCES * math.ceil(longest / BLOCK_SIZE)
    if settings.kv_blocks is not None and math.ceil((longest + 1) / BLOCK_SIZE) > kv_blocks:
        raise ValueError(f"--kv-blocks {kv_blocks} cannot hold the longest turn ({longest} tokens)")
    say(f"workload: {base.requests} requests ({len(base.conversations)} conversations, {len(base.singles)} "
        f"single shots), longest turn {longest} tokens; {kv_blocks} KV blocks per replica")  # fmt: skip
    say("measuring the engine for the simulator (one torch thread, before any replica starts)")
    measurement = fit_profile(settings, longest, kv_blocks, say)
    profile = measurement.profile
    service = service_seconds(profile, base)
    results: list[dict[str, Any]] = []
    schedules: dict[str, Any] = {}
    for replicas in settings.replicas:
        parallel = parallel_replicas(replicas, settings.device)
        rate = settings.rate or settings.load * parallel / service
        workload = base.at_rate(rate)
        schedules[str(replicas)] = {"offeredRps": round(rate, 3), "parallelReplicas": parallel}
        baseline: dict[str, Any] | None = None
        for label, cache in CONFIGURATIONS:
            choice = plugin_choice.resolve("cache", cache, "cache")
            reuses = bool(choice.impl.reuses_prefixes(params=choice.params))  # type: ignore[attr-defined]
            say(f"[{replicas} replicas] {label}: {workload.requests} requests offered at {rate:.2f}/s ...")
            with fleet(
                replicas, settings.model, cache, kv_blocks, settings.max_batch, settings.device
            ) as running:
                before = running.replica_stats()
                load_before = os.getloadavg()[0]
                samples = drive(workload, running.router, answer)
                load_after = os.getloadavg()[0]
                after = running.replica_stats()
            result = {
                "replicas": replicas,
                "configuration": label,
                "cache": cache,
                "offeredRps": round(rate, 3),
            }
            result.update(measured_summary(samples, before, after, reuses))
            # the host's 1-minute load average around the run: other work on the cores shows here
            result["loadAverage"] = [round(load_before, 2), round(load_after, 2)]
            sent = [s.sent for s in samples]
            simulated = bench_cache_sim.predict(sent, choice, profile, replicas, settings.model_source)
            result["simulated"] = bench_cache_sim.summary(simulated)
            baseline = baseline or result
            result["ratios"] = ratios(baseline, result)
            results.append(result)
            say(
                f"  TTFT P50 {result['ttftMsP50']} ms, P90 {result['ttftMsP90']} ms (simulated "
                f"{result['simulated']['ttftMsP90']}), {result['throughputRps']} req/s, "
                f"hit rate {result['hitRate']}"
            )
    device_name = torch.cuda.get_device_name(0) if settings.device.startswith("cuda") else "cpu"
    return {
        "bench": "cache",
        "settings": {
            "replicas": list(settings.replicas),
            "device": settings.device,
            "load": settings.load,
            "rate": settings.rate,
            "kvBlocksPerReplica": kv_blocks,
            "maxBatch": settings.max_batch,
            "model": settings.model,
            "blockSize": BLOCK_SIZE,
            "quick": settings.quick,
            "workload": workload_description(base),
            "torchThreadsPerReplica": 1,
        },  # fmt: skip
        "schedules": schedules,
        "machine": {
            "host": platform.node(),
            "cpuCores": os.cpu_count(),
            "device": device_name,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "profile": {
            **profile.to_dict(),
            "fitErrorPercent": round(measurement.fit_error_percent, 2),
            "measuredOn": measurement.measured_on,
            "serviceSecondsPerRequest": round(service, 4),
        },  # fmt: skip
        "results": results,
        "goals": goals(results, settings.workload),
        "limits": limits(settings, kv_blocks),
        "wallSeconds": round(time.monotonic() - started, 1),
    }


def workload_description(workload: Workload) -> dict[str, Any]:
    s = workload.settings
    return {
        "seed": s.seed, "conversations": s.conversations, "turns": [s.min_turns, s.max_turns],
        "singleShots": len(workload.singles), "requests": workload.requests,
        "systemPromptTokens": s.system_tokens, "userMessageTokensMean": s.user_tokens,
        "answerTokens": s.answer_tokens, "thinkTimeMeanS": s.think_mean_s, "thinkTimeSigma": s.think_sigma,
        "thinkTime": "log-normal", "singleShare": s.single_share,
        "arrivals": "conversation starts and single shots open-loop (Poisson); turns closed-loop",
    }  # fmt: skip


def goals(results: list[dict[str, Any]], workload: WorkloadSettings) -> dict[str, Any]:
    """The issue's two goals, as measured in this run (never asserted)."""
    out: dict[str, Any] = {}
    for replicas in sorted({r["replicas"] for r in results}):
        mine = {r["configuration"]: r for r in results if r["replicas"] == replicas}
        cached = [r for name, r in mine.items() if name != CONFIGURATIONS[0][0]]
        best = max(cached, key=lambda r: r["ratios"]["ttftP90"] or 0)
        lru, ttl = mine.get("prefix-aware + prefix-lru"), mine.get("prefix-aware + session-ttl")
        retention = lru["simulated"]["meanEvictedIdleS"] if lru else None
        out[str(replicas)] = {
            "bestP90TtftRatio": best["ratios"]["ttftP90"],
            "bestConfiguration": best["configuration"],
            "p90TtftAtLeast3xBetter": {
                name: (r["ratios"]["ttftP90"] or 0) >= 3
                for name, r in mine.items()
                if name != CONFIGURATIONS[0][0]
            },  # fmt: skip
            "equalThroughput": {name: r["ratios"]["throughput"] for name, r in mine.items()},
            "sessionTtlAheadOfPrefixLru": (
                None
                if not (lru and ttl and lru["ttftMsP90"] and ttl["ttftMsP90"])
                else ttl["ttftMsP90"] < lru["ttftMsP90"]
            ),
            "followUpTtftMsP90": {name: r["followUpTtftMsP90"] for name, r in mine.items()},
            "thinkTimeMeanS": workload.think_mean_s,
            "lruRetentionSimulatedS": retention,
            "thinkExceedsLruRetention": None if retention is None else workload.think_mean_s > retention,
        }
    return out


def limits(settings: BenchSettings, kv_blocks: int) -> list[str]:
    """What bounds these figures, for the reader."""
    cores = os.cpu_count() or 1
    notes = [
        f"the builtin tiny model ({settings.model_source}, random weights, byte tokenizer): its forward "
        "passes are cheap, so HTTP, routing and Python overhead weigh more than on a real model",
        f"KV cache of {kv_blocks} blocks of {BLOCK_SIZE} tokens per replica, sized to the workload so "
        "that eviction matters",
    ]
    if settings.device == "cpu":
        notes.insert(
            0,
            f"CPU only: {cores} cores shared by every replica (one torch thread each), the router and "
            "this driver; with more replicas than cores they take turns on the cores",
        )
    notes.append(
        "the simulator's TTFT is the engine's step time from a profile fitted here with one thread "
        "and no other load; the measured one adds HTTP, the router and CPU sharing"
    )
    if settings.quick:
        notes.append("--quick: a few requests, a smoke test, not a measurement to compare")
    return notes


def quick_settings(settings: BenchSettings) -> BenchSettings:
    """The small run ``--quick`` makes (and the tests): a smoke test of every configuration."""
    return replace(settings, workload=replace(QUICK_WORKLOAD, seed=settings.workload.seed), max_seq_len=1024,
                   max_batch=4, quick=True)  # fmt: skip
