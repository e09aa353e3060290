"""Tokeniser, vocabulary and padding for text classification."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Literal, Sequence

import torch

from nsl_lab.errors import check_choice, check_integer

PAD, UNK = "<pad>", "<unk>"
Truncate = Literal["head", "tail"]
_MARKUP = re.compile(r"<[^>]*>")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with inner apostrophes) and ``!``/``?``; markup such as ``<br />`` removed."""
    return _TOKEN.findall(_MARKUP.sub(" ", text.lower()))


class Vocabulary:
    """Token ids: ``0`` = padding, ``1`` = unknown, then tokens by decreasing frequency.

    Args:
        tokens: the kept tokens, most frequent first.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = [PAD, UNK, *tokens]
        self.ids = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, documents: Iterable[Sequence[str]], max_size: int | None = 20000, min_freq: int = 1) -> "Vocabulary":
        """The ``max_size`` most frequent tokens seen at least ``min_freq`` times (ties alphabetical)."""
        if max_size is not None:
            check_integer("data.vocab_size", max_size, 1)
        check_integer("data.min_freq", min_freq, 1)
        counts = Counter(token for document in documents for token in document)
        ranked = sorted((token for token, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ranked[:max_size] if max_size is not None else ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.ids.get(token, 1) for token in tokens]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(size={len(self)})"


def pad_sequences(
    sequences: Sequence[Sequence[int]], max_len: int, truncate: Truncate = "head"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, max_len], lengths [N])``: at most ``max_len`` ids of each sequence, 0-padded.

    ``truncate="head"`` keeps the first ``max_len`` ids, ``"tail"`` the last ones (a review's
    verdict tends to come at its end). An empty sequence becomes one unknown token, so every
    length is >= 1 (packing needs it).
    """
    check_integer("data.max_len", max_len, 1)
    check_choice("data.truncate", truncate, Truncate)
    lengths = torch.tensor([min(max(len(s), 1), max_len) for s in sequences], dtype=torch.long)
    ids = torch.zeros(len(sequences), max_len, dtype=torch.long)
    kept = (lambda s: s[:max_len]) if truncate == "head" else (lambda s: s[-max_len:])
    flat = torch.tensor([i for s in sequences for i in (kept(s) if s else [1])], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(sequences)), lengths)
    columns = torch.arange(len(flat)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    ids[rows, columns] = flat
    return ids, lengths
