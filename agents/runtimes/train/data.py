"""Token streams for training: a built-in synthetic corpus or a local token file.

Nothing is ever downloaded: a Workload must be able to train on an air-gapped node, and the
tests must not depend on a network. Both sources end up as one 1-D tensor of token ids, from
which batches are random contiguous windows drawn with a seeded generator, so a run is
reproducible from its seed alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.runtimes.tokenizer import ByteTokenizer
from agents.runtimes.train.config import ConfigError

# Lowercase letters and space, so a synthetic sample decodes to something a person can read.
SYNTHETIC_ALPHABET = b"abcdefghijklmnopqrstuvwxyz "
SYNTHETIC_DEFAULTS = {"patterns": 64, "patternLength": 8, "tokens": 1 << 16}


@dataclass
class TokenStream:
    """All training tokens in memory, plus where they came from (for error messages)."""

    tokens: torch.Tensor  # 1-D int64
    origin: str

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``seq_len + 1`` tokens, split into inputs and targets."""
        starts = torch.randint(0, len(self.tokens) - seq_len, (batch_size,), generator=generator)
        windows = self.tokens[starts[:, None] + torch.arange(seq_len + 1)]
        return windows[:, :-1], windows[:, 1:]


def load_tokens(data: dict[str, Any], vocab_size: int, seq_len: int, seed: int) -> TokenStream:
    """The stream a ``data`` spec names (``builtin:synthetic`` or ``path:/file``), checked for the model."""
    source = data["source"]
    kind, _, name = source.partition(":")
    if kind == "builtin" and name == "synthetic":
        stream = synthetic_tokens(data.get("config", {}), seed)
    elif kind == "builtin":
        raise ConfigError("data.source", f"unknown builtin {name!r}; the only builtin is builtin:synthetic")
    elif kind == "path" and name:
        stream = file_tokens(Path(name), vocab_size)
    else:
        raise ConfigError(
            "data.source", f"unknown source {source!r}; use builtin:synthetic or path:/file.txt|/file.bin"
        )
    if len(stream.tokens) < seq_len + 1:
        raise ConfigError(
            "data.source",
            f"{stream.origin} has {len(stream.tokens)} tokens but one window needs seqLen + 1 = "
            f"{seq_len + 1}; "
            "use a longer file or a smaller seqLen",
        )
    return stream


def synthetic_tokens(config: dict[str, Any], seed: int) -> TokenStream:
    """A corpus of randomly concatenated phrases drawn from a fixed random phrase book.

    Why this shape: its letter frequencies are learnable in a few steps and its within-phrase
    continuations in a few hundred, so loss falls visibly on a tiny model and keeps falling on a
    bigger one, while the whole corpus follows from ``seed``.
    """
    unknown = sorted(set(config) - set(SYNTHETIC_DEFAULTS) - {"seed"})
    if unknown:
        raise ConfigError(
            f"data.config.{unknown[0]}",
            f"unknown field; builtin:synthetic takes {', '.join(SYNTHETIC_DEFAULTS)}",
        )
    settings = {}
    for key, default in SYNTHETIC_DEFAULTS.items():
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 26:
            raise ConfigError(f"data.config.{key}", f"must be an integer from 1 to 2^26 (got {value!r})")
        settings[key] = value
    data_seed = config.get("seed", seed)
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
        raise ConfigError("data.config.seed", f"must be a non-negative integer (got {data_seed!r})")
    generator = torch.Generator().manual_seed(data_seed)
    alphabet = torch.tensor(list(SYNTHETIC_ALPHABET), dtype=torch.int64)
    book = alphabet[
        torch.randint(
            0, len(alphabet), (settings["patterns"], settings["patternLength"]), generator=generator
        )
    ]
    count = -(-settings["tokens"] // settings["patternLength"])
    picks = torch.randint(0, settings["patterns"], (count,), generator=generator)
    tokens = torch.cat([torch.tensor([ByteTokenizer.BOS]), book[picks].flatten()[: settings["tokens"]]])
    return TokenStream(tokens=tokens, origin="builtin:synthetic")


def file_tokens(path: Path, vocab_size: int) -> TokenStream:
    """Tokens from a local file: ``.txt`` is UTF-8 text, ``.bin`` is little-endian uint16 ids."""
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".bin"):
        raise ConfigError(
            "data.source", f"{path}: unsupported extension {path.suffix!r}; use a .txt or .bin file"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            "data.source", f"cannot read {path} ({exc.strerror}); point path: at a local file"
        ) from exc
    if suffix == ".txt":
        tokens = _text_tokens(path, raw)
        _check_range(path, tokens, vocab_size, byte_of=lambda i: i - 1)  # BOS takes no bytes
    else:
        tokens = _binary_tokens(path, raw)
        _check_range(path, tokens, vocab_size, byte_of=lambda i: 2 * i)
    return TokenStream(tokens=tokens, origin=str(path))


def _text_tokens(path: Path, raw: bytes) -> torch.Tensor:
    """ByteTokenizer's encoding (BOS, then the UTF-8 bytes), built without a Python list per byte."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "data.source", f"{path} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from exc
    body = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)
        if raw
        else torch.empty(0, dtype=torch.int64)
    )
    return torch.cat([torch.tensor([ByteTokenizer.BOS]), body])


def _binary_tokens(path: Path, raw: bytes) -> torch.Tensor:
    if len(raw) % 2:
        raise ConfigError(
            "data.source", f"{path} has an odd size ({len(raw)} bytes); a .bin file holds uint16 ids"
        )
    if not raw:
        return torch.empty(0, dtype=torch.int64)
    buffer = bytearray(raw)
    if sys.byteorder == "big":
        buffer[0::2], buffer[1::2] = buffer[1::2], buffer[0::2]
    return torch.frombuffer(buffer, dtype=torch.uint16).to(torch.int64)


def _check_range(path: Path, tokens: torch.Tensor, vocab_size: int, byte_of: Callable[[int], int]) -> None:
    """The first id the model has no embedding for is an error naming the file and where it is."""
    bad = (tokens >= vocab_size).nonzero()
    if len(bad):
        offset = int(bad[0, 0])
        raise ConfigError(
            "data.source",
            f"{path}: token id {int(tokens[offset])} at token offset {offset} "
            f"(byte offset {byte_of(offset)}) is out of range for vocabSize {vocab_size}; "
            f"write ids below {vocab_size} or raise model.config.vocabSize",
        )
