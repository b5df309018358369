"""A byte-level tokenizer: every UTF-8 byte is a token, plus three specials.

Built in so that a Workload never needs to download a vocabulary; the model's
``vocabSize`` default (259) is exactly this tokenizer's size.
"""

from __future__ import annotations


class ByteTokenizer:
    """Bytes 0..255 map to ids 0..255; BOS, EOS and PAD follow."""

    BOS = 256
    EOS = 257
    PAD = 258
    vocab_size = 259

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """UTF-8 bytes of ``text``, preceded by BOS unless ``bos`` is false."""
        ids = list(text.encode("utf-8"))
        return [self.BOS, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        """Text for ``ids``; specials and out-of-range ids are skipped, bad UTF-8 replaced."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
