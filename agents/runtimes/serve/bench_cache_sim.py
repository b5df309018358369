"""What ``flotilla bench cache`` feeds the serving simulator: the trace it just measured, served
by the same cache plugin it measured.

The trace is the run's own requests -- each sent at the time it was sent, with the prompt
the replica tokenized (so its block names are the engine's: ``plugins.prefix_hash`` over
the same token ids, seeded with the same model key) and the output it produced. The
simulated router calls the plugin's own ``route`` with what each simulated replica holds,
and the simulated replicas keep prefixes as the plugin says: not at all when
``reuses_prefixes`` is false, pinned for the plugin's ``pin_seconds`` when it pins, with its
``capacityShare`` otherwise. Differences that remain: the simulated router knows exactly
what every replica holds (the real one learns it from its own routing and the replicas'
``/cache``), and the simulator charges the profile's step times, not the HTTP, routing and
CPU sharing around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.runtimes.plugin_choice import PluginChoice
from agents.runtimes.tokenizer import ByteTokenizer
from plugins.prefix_hash import BLOCK_SIZE, block_hashes, model_seed
from plugins.sim import GpuProfile, InstanceView, PrefixCache, Request, SimResult, Turn, simulate
from plugins.types import ReplicaLoad, RouteRequest, SessionTurn

REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Sent:
    """One request as the bench sent it and what came back (times in seconds from the run's start)."""

    id: int
    session: str | None
    sent_s: float
    prompt: str  # the chat template's text, as the replica tokenizes it
    answer: str
    max_tokens: int
    finish_reason: str | None


def output_ids(sent: Sent, tokenizer: ByteTokenizer) -> tuple[list[int], int]:
    """(the output token ids the answer text shows for certain, how many tokens were generated).

    With the byte tokenizer an answer's text is its bytes up to the first replacement
    character (an invalid byte sequence the client cannot see through); a ``length`` finish
    generated exactly ``max_tokens``, a ``stop`` one the bytes plus its end-of-text token.
    """
    known = sent.answer.split(REPLACEMENT, 1)[0]
    ids = tokenizer.encode(known, bos=False)
    if sent.finish_reason == "length":
        return ids[: sent.max_tokens], sent.max_tokens
    return ids, max(1, min(sent.max_tokens, len(sent.answer.encode()) + 1))


def trace(samples: list[Sent], model_key: str) -> list[Request]:
    """The simulator's requests for ``samples``: arrivals, lengths, block names and sessions.

    A request names the full blocks its sequence writes -- prompt and output, up to the
    last token, which is never written -- as the engine does; where the output is not
    known for certain the names are the request's own, so they never match.
    """
    tokenizer, seed = ByteTokenizer(), model_seed(model_key)
    requests = []
    for sent in sorted(samples, key=lambda s: s.sent_s):
        prompt = tokenizer.encode(sent.prompt)
        answer, generated = output_ids(sent, tokenizer)
        written = (len(prompt) + generated - 1) // BLOCK_SIZE
        names = block_hashes(prompt + answer, BLOCK_SIZE, seed=seed, limit=written)
        own = -(sent.id + 1) << 32
        names += [own - j for j in range(len(names), written)]
        requests.append(Request(sent.id, sent.sent_s, len(prompt), generated, tuple(names), sent.session))
    return requests


def prefix_cache(choice: PluginChoice, total_blocks: int) -> PrefixCache | None:
    """How the plugin keeps prefixes, in the simulator's terms; None when it reuses none."""
    impl, params = choice.impl, choice.params
    if not impl.reuses_prefixes(params=params):  # type: ignore[attr-defined]
        return None

    def pin_seconds(turn: Turn) -> float:
        session = SessionTurn(
            session=turn.session, blocks=list(range(turn.blocks)), gaps=list(turn.gaps),
            memory_in_use=turn.memory_in_use, pinned_share=turn.pinned_share, total_blocks=total_blocks,
        )  # fmt: skip
        return float(impl.pin_seconds(turn=session, params=params))  # type: ignore[attr-defined]

    return PrefixCache(capacity_share=float(getattr(params, "capacityShare", 1.0)), pin_seconds=pin_seconds)


class PluginDispatch:
    """A simulator dispatch function that asks the plugin's ``route``, as the router does:
    over the prompt's token ids and block names, with each replica's load and holdings."""

    def __init__(self, choice: PluginChoice, model_key: str, samples: list[Sent]):
        self.choice = choice
        self.seed = model_seed(model_key)
        tokenizer = ByteTokenizer()
        self.prompts = {s.id: tokenizer.encode(s.prompt) for s in samples}

    def __call__(self, request: Request, views: list[InstanceView]) -> int:
        ids = self.prompts[request.id]
        names = block_hashes(ids, BLOCK_SIZE, seed=self.seed)
        route = RouteRequest(
            token_ids=ids, block_hashes=names, session=request.session, block_size=BLOCK_SIZE
        )
        loads = [
            ReplicaLoad(
                name=f"replica-{v.index:03d}",
                url="",
                queued=v.waiting,
                running=v.running,
                free_blocks=v.free_blocks,
                cached_hashes=frozenset(v.cached),
                in_flight=v.load,
            )  # fmt: skip
            for v in views
        ]
        chosen = self.choice.impl.route(request=route, replicas=loads, params=self.choice.params)  # type: ignore[attr-defined]
        return int(chosen.rsplit("-", 1)[1])


def predict(
    samples: list[Sent], choice: PluginChoice, profile: GpuProfile, replicas: int, model_key: str
) -> SimResult:
    """The simulator's run of the measured trace on ``replicas`` instances of ``profile``."""
    return simulate(
        trace(samples, model_key), profile, instances=replicas,
        dispatch=PluginDispatch(choice, model_key, samples), cache=prefix_cache(choice, profile.kv_blocks),
    )  # fmt: skip


def summary(result: SimResult) -> dict[str, Any]:
    """P50/P90 TTFT in ms, the hit rate and how long LRU kept an unused block, as the bench reports them."""

    def ms(q: float) -> float | None:
        value = result.percentile("ttft", q)
        return round(value * 1e3, 1) if value != float("inf") else None

    cache = result.prefix_cache or {}
    return {
        "ttftMsP50": ms(50),
        "ttftMsP90": ms(90),
        "hitRate": round(cache.get("hitRate", 0.0), 4),
        "evictions": int(cache.get("evictions", 0)),
        "pinsBroken": int(cache.get("pinsBroken", 0)),
        "meanEvictedIdleS": round(cache["meanEvictedIdleS"], 2) if cache.get("evictions") else None,
        "preemptions": sum(r.preemptions for r in result.requests),
    }
