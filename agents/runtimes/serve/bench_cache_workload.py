"""The multi-turn workload ``flotilla bench cache`` drives: conversations that share a system
prompt and grow turn by turn, with think time between turns, and single-shot requests.

What prefix caching, session pins and prefix-aware routing are for (issue 11): every request
starts with the same system prompt, and every turn of a conversation repeats the whole
conversation so far -- the previous answers included -- before its new user message. The
user thinks between turns (a log-normal think time: mostly near its mean, a long tail), so
how long a replica keeps a conversation it is not serving decides whether its next turn
finds it; a share of single-shot requests brings the system prompt without a history.

Everything is drawn from the seed, and from separate random streams (text, turns, think
times, arrivals), so the same seed gives the same conversations whatever the rate: only
the open-loop arrival times (conversation starts and single shots, Poisson) scale with it.
Text is lower-case ASCII words, so with the byte tokenizer of the builtin models a token
is a character and lengths are exact. No torch here: the tests and the simulator side
read it without loading a model.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from agents.runtimes.serve.protocol import chat_prompt

WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made live"
).split()


@dataclass(frozen=True)
class WorkloadSettings:
    """The shape of the workload; the defaults are what ``flotilla bench cache`` runs."""

    conversations: int = 24
    min_turns: int = 3
    max_turns: int = 5
    system_tokens: int = 384  # the shared system prompt's length
    user_tokens: int = 48  # mean of a user message's length (log-normal, sigma 0.4)
    answer_tokens: int = 32  # max_tokens of every request
    think_mean_s: float = 15.0  # mean think time between an answer and the next turn
    think_sigma: float = 0.5  # log-normal shape of the think time
    single_share: float = 0.25  # share of all requests that are single shots
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("conversations", "min_turns", "system_tokens", "user_tokens", "answer_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_turns < self.min_turns:
            raise ValueError(f"max_turns ({self.max_turns}) must be >= min_turns ({self.min_turns})")
        if not self.think_mean_s >= 0 or not self.think_sigma >= 0:
            raise ValueError("think_mean_s and think_sigma must be >= 0")
        if not 0 <= self.single_share < 1:
            raise ValueError(f"single_share must be within [0, 1), got {self.single_share!r}")

    @property
    def mean_turns(self) -> float:
        return (self.min_turns + self.max_turns) / 2


@dataclass(frozen=True)
class Turn:
    """One user message of a conversation, and how long the user thinks before sending it
    (counted from the previous answer's end; 0 for the first turn)."""

    user: str
    think_s: float


@dataclass(frozen=True)
class Conversation:
    session: str  # the OpenAI ``user`` field of each of its requests
    start_s: float  # open-loop: when its first turn is sent, at the unit rate
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class SingleShot:
    id: str
    at_s: float  # open-loop, at the unit rate
    user: str


@dataclass(frozen=True)
class Workload:
    """The conversations and single shots of one seed, arriving at one request per second;
    :meth:`at_rate` scales the open-loop arrivals to an offered rate."""

    settings: WorkloadSettings
    system: str
    conversations: tuple[Conversation, ...]
    singles: tuple[SingleShot, ...]
    rate: float = 1.0

    @property
    def requests(self) -> int:
        return sum(len(c.turns) for c in self.conversations) + len(self.singles)

    def at_rate(self, rate: float) -> Workload:
        """The same workload with its open-loop arrivals offered at ``rate`` requests/s in all
        (conversation starts at ``rate x (1 - share) / mean turns``, single shots at
        ``rate x share``); think times are seconds of the user's and do not change."""
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
        scale = self.rate / rate
        conversations = tuple(Conversation(c.session, c.start_s * scale, c.turns) for c in self.conversations)
        singles = tuple(SingleShot(s.id, s.at_s * scale, s.user) for s in self.singles)
        return Workload(self.settings, self.system, conversations, singles, rate)

    def messages(self, history: list[tuple[str, str]], user: str) -> list[dict[str, str]]:
        """The chat messages of a turn: the system prompt, every earlier (user, answer) pair,
        then the new user message."""
        messages = [{"role": "system", "content": self.system}]
        for asked, answered in history:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        return [*messages, {"role": "user", "content": user}]

    def prompt_tokens(self, answer_bytes: int | None = None) -> list[int]:
        """Every request's prompt length in byte-tokenizer tokens (BOS included), if every
        answer is ``answer_bytes`` long (default: ``answer_tokens`` ASCII bytes)."""
        answer = "x" * (answer_bytes if answer_bytes is not None else self.settings.answer_tokens)
        lengths = []
        for conversation in self.conversations:
            history: list[tuple[str, str]] = []
            for turn in conversation.turns:
                lengths.append(1 + len(chat_prompt(self.messages(history, turn.user)).encode()))
                history.append((turn.user, answer))
        lengths += [1 + len(chat_prompt(self.messages([], s.user)).encode()) for s in self.singles]
        return lengths

    def longest_prompt_tokens(self, answer_bytes: int | None = None) -> int:
        """The longest prompt any request sends (see :meth:`prompt_tokens`)."""
        return max(self.prompt_tokens(answer_bytes))


def _text(rng: random.Random, tokens: int) -> str:
    """``tokens`` characters of lower-case words (the byte tokenizer: one token a character)."""
    out: list[str] = []
    length = 0
    while length < tokens:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:tokens].rstrip() or "x"


def _message_length(rng: random.Random, mean: int) -> int:
    sigma = 0.4
    return max(4, min(4 * mean, round(rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma))))


def _think(rng: random.Random, settings: WorkloadSettings) -> float:
    if settings.think_mean_s == 0:
        return 0.0
    sigma = settings.think_sigma
    return rng.lognormvariate(math.log(settings.think_mean_s) - sigma * sigma / 2, sigma)


def generate(settings: WorkloadSettings) -> Workload:
    """The workload of ``settings`` at one request per second (see :meth:`Workload.at_rate`)."""
    seed = settings.seed
    system = _text(random.Random(f"{seed}:system"), settings.system_tokens)
    turns_rng, think_rng = random.Random(f"{seed}:turns"), random.Random(f"{seed}:think")
    text_rng, arrivals = random.Random(f"{seed}:text"), random.Random(f"{seed}:arrivals")
    conversation_rate = (1 - settings.single_share) / settings.mean_turns
    conversations, at = [], 0.0
    for i in range(settings.conversations):
        count = turns_rng.randint(settings.min_turns, settings.max_turns)
        turns = tuple(
            Turn(
                _text(text_rng, _message_length(text_rng, settings.user_tokens)),
                _think(think_rng, settings) if k else 0.0,
            )
            for k in range(count)
        )
        conversations.append(Conversation(f"session-{i:04d}", at, turns))
        at += arrivals.expovariate(conversation_rate)
    singles: list[SingleShot] = []
    if settings.single_share:
        total_turns = sum(len(c.turns) for c in conversations)
        count = round(total_turns * settings.single_share / (1 - settings.single_share))
        single_rng, at = random.Random(f"{seed}:singles"), 0.0
        for i in range(count):
            at += single_rng.expovariate(settings.single_share)
            user = _text(text_rng, _message_length(text_rng, settings.user_tokens))
            singles.append(SingleShot(f"single-{i:04d}", at, user))
    return Workload(settings, system, tuple(conversations), tuple(singles))
