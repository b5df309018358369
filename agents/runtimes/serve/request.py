"""One generation request: its tokens, block table, timings, stop rules and streamed text.

The engine thread mutates a Request; HTTP threads only read its event queue, its ``done``
event and, once done, its result -- so no lock is needed between them.
"""

from __future__ import annotations

import codecs
import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from agents.runtimes.serve.kvcache import BlockTable
from agents.runtimes.serve.sampling import SamplingParams
from agents.runtimes.tokenizer import ByteTokenizer, FileTokenizer

_ids = itertools.count(1)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # stop | length | cancelled | abort | error
    ttft: float | None
    tpot: float | None
    # Prompt tokens whose k/v came from the prefix cache at admission (OpenAI's
    # usage.prompt_tokens_details.cached_tokens).
    cached_tokens: int = 0


class Request:
    """One generation: its tokens, block table, timings and an event queue for streaming."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: ByteTokenizer | FileTokenizer,
        session: str | None = None,
        arrived_at: float | None = None,
    ):
        self.id = f"req-{next(_ids)}"
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.session = session
        # On the engine's clock (the one the cache plugin sees), for the gaps between turns.
        self.arrived_at = time.monotonic() if arrived_at is None else arrived_at
        self.output_ids: list[int] = []
        self.generator = params.generator()
        self.table: BlockTable | None = None
        self.slots: list[int] = []  # flat cache slot of each position held
        self.cached = 0  # positions whose k/v are in the cache
        # Chained hashes of the sequence's full blocks so far; tokens never change, so
        # they survive preemption and a re-admitted request looks itself up again.
        self.hashes: list[int] = []
        self.committed = 0  # leading table blocks already offered to the prefix index
        self.cached_tokens: int | None = None  # prompt tokens reused at first admission
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.preemptions = 0
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.done = threading.Event()
        self.cancelled = False
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self._emitted = 0
        self._stop_hit = False

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token_at(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def tokens(self, start: int, end: int) -> list[int]:
        """Token ids of positions ``start..end-1`` of prompt and output together."""
        n = len(self.prompt_ids)
        head = self.prompt_ids[start:end] if start < n else []
        return head + self.output_ids[max(start - n, 0) : max(end - n, 0)]

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (e.g. the client went away)."""
        self.cancelled = True

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Text deltas as they are generated; ends when the request finishes."""
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "done":
                return
            yield value

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the request to finish and return what it produced."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"{self.id} did not finish within {timeout} s")
        return GenerationResult(
            self.text, list(self.output_ids), len(self.prompt_ids), self.finish_reason or "error",
            self.ttft, self.tpot, self.cached_tokens or 0,
        )  # fmt: skip

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    @property
    def tpot(self) -> float | None:
        if self.first_token_at is None or self.finished_at is None or len(self.output_ids) < 2:
            return None
        return (self.finished_at - self.first_token_at) / (len(self.output_ids) - 1)

    def append(self, token: int) -> str | None:
        """Add a sampled token, emit the safe part of the new text; the finish reason if it ends."""
        self.output_ids.append(token)
        p = self.params
        if token == self._tokenizer.EOS and not p.ignore_eos:
            return "stop"
        piece = self._tokenizer.piece(token)
        if piece:
            self.text += self._decoder.decode(piece)
        for stop in p.stop:
            at = self.text.find(stop)
            if at >= 0:
                self.text = self.text[:at]
                self._stop_hit = True
                return "stop"
        if len(self.output_ids) >= p.max_tokens:
            return "length"
        # hold back a tail that could still become a stop string
        hold = max((k for s in p.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        self._emit(len(self.text) - hold)
        return None

    def _emit(self, upto: int) -> None:
        if upto > self._emitted:
            self.events.put(("delta", self.text[self._emitted : upto]))
            self._emitted = upto

    def finish(self, reason: str) -> None:
        if not self._stop_hit:  # a cut at a stop string drops any pending partial character too
            self.text += self._decoder.decode(b"", final=True)
        self._emit(len(self.text))
        self.finish_reason = reason
        self.finished_at = time.monotonic()
        self.events.put(("done", reason))
        self.done.set()
