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

    def piece(self, token: int) -> bytes:
        """The bytes one token adds to the output (streamed through a UTF-8 decoder)."""
        return bytes([token]) if 0 <= token < 256 else b""


BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "[BOS]", "<|bos|>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "[EOS]", "<|eos|>", "<|endoftext|>")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


class FileTokenizer:
    """A local ``tokenizer.json`` (Hugging Face ``tokenizers`` format), named by
    ``model.tokenizer: path:/models/x/tokenizer.json``; read from disk, never fetched.

    BOS and EOS are found by their usual names; PAD falls back to EOS.
    """

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # the library raises a bare Exception for unreadable files
            raise ValueError(f"model.tokenizer: cannot read {path}: {exc}") from None
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.BOS = self._special(BOS_NAMES, "BOS", path)
        self.EOS = self._special(EOS_NAMES, "EOS", path)
        pad = next(
            (self._tokenizer.token_to_id(n) for n in PAD_NAMES if self._tokenizer.token_to_id(n) is not None),
            None,
        )
        self.PAD = self.EOS if pad is None else pad

    def _special(self, names: tuple[str, ...], what: str, path: str) -> int:
        for name in names:
            token = self._tokenizer.token_to_id(name)
            if token is not None:
                return token
        raise ValueError(f"model.tokenizer: {path} has no {what} token; add one of {', '.join(names)}")

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return [self.BOS, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def piece(self, token: int) -> bytes:
        if token in (self.BOS, self.EOS, self.PAD):
            return b""
        return self._tokenizer.decode([token], skip_special_tokens=True).encode("utf-8")


def load_tokenizer(source: str | None) -> ByteTokenizer | FileTokenizer:
    """``builtin:bytes`` (the default) or ``path:/file/tokenizer.json``."""
    if source in (None, "", "builtin:bytes"):
        return ByteTokenizer()
    if source.startswith("path:"):
        return FileTokenizer(source.removeprefix("path:"))
    raise ValueError(f"model.tokenizer {source!r}: use builtin:bytes or path:/file/tokenizer.json")
