from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nsl_lab.errors import check_flag, check_integer, check_range
from nsl_lab.modules.backbone import Backbone, Output

#: odd 31-bit multipliers, one per position inside an n-gram (hashing n-grams of token ids)
HASH_MULTIPLIERS = (1, 1_000_003, 998_244_353)


def ngram_ids(x: torch.Tensor, n: int, vocab_size: int, buckets: int) -> torch.Tensor:
    """Ids of the hashed ``n``-grams of token ids ``x`` ``[B, T]``: ``[B, T - n + 1]``, each in
    ``[vocab_size, vocab_size + buckets)`` so they follow the unigram rows of one table."""
    length = max(x.shape[1] - n + 1, 0)
    code = torch.zeros(x.shape[0], length, dtype=torch.long, device=x.device)
    for offset in range(n):
        code = code + x[:, offset:offset + length].long() * HASH_MULTIPLIERS[offset]
    return vocab_size + code.remainder(buckets)


class BagOfNgrams(Backbone):
    r"""fastText-style classifier: the mean of word and hashed n-gram embeddings, then linear.

    Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification". For token ids
    :math:`x_{1:\ell}` (the first ``lengths`` of each 0-padded row),

    .. math::
        e = [E[x_1], \dots, E[x_\ell],\ E[h(x_1 \dots x_n)], \dots,\ E[h(x_{\ell-n+1} \dots x_\ell)]],\quad
        u = \frac{1}{|e|} \sum_t e_t,\quad
        \mathrm{logits} = W\, \mathrm{dropout}(u) + b

    with every order from 1 to ``ngrams``, each n-gram hashed into one of ``buckets`` rows
    that follow the vocabulary's. ``embed(x)`` returns the concatenated embeddings
    :math:`e` ``[B, T', D]``, where an adversarial regularizer perturbs the input (as on the
    BiLSTM's word embeddings); ``hidden`` is the mean :math:`u`. Cheap enough to read whole
    reviews (``data.max_len`` in the thousands) on a CPU.

    Args:
        in_features: vocabulary size (id 0 is padding).
        num_classes: number of classes.
        embedding_dim: width :math:`D` of the embeddings (default 64).
        ngrams: longest n-gram, 1 to 3 (default 2: words and bigrams).
        buckets: hash rows shared by the n-grams of order 2 and more (default 2**18).
        dropout: dropout on :math:`u` (default 0.0).
        normalize: normalized embeddings, an unweighted variant of Miyato et al. 2017's: each
            coordinate of the table centred and scaled to unit variance over its rows (word
            and bucket rows alike, padding excluded; Miyato et al. weight the statistics by
            word frequency) before the lookup, so an adversarial radius on ``embed(x)`` keeps its meaning while training
            grows the vectors (default False).
    """

    accepts = ("tokens",)
    repr_settings = ("embedding_dim", "ngrams", "buckets", "dropout", "normalize")

    def __init__(self, in_features: int, num_classes: int, embedding_dim: int = 64, ngrams: int = 2,
                 buckets: int = 2 ** 18, dropout: float = 0.0, normalize: bool = False) -> None:
        super().__init__()
        for name, value in [("in_features", in_features), ("num_classes", num_classes),
                            ("embedding_dim", embedding_dim), ("buckets", buckets)]:
            check_integer(f"backbone.{name}", value, 1)
        check_integer("backbone.ngrams", ngrams, 1)
        check_range("backbone.ngrams", ngrams, 1, len(HASH_MULTIPLIERS))
        check_range("backbone.dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.embedding_dim, self.ngrams, self.dropout = int(embedding_dim), int(ngrams), float(dropout)
        self.buckets = int(buckets) if self.ngrams > 1 else 0
        self.normalize = check_flag("backbone.normalize", normalize)
        self.embedding = nn.Embedding(self.in_features + self.buckets, self.embedding_dim, padding_idx=0)
        self.classifier = nn.Linear(self.embedding_dim, self.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fastText's start: small uniform vectors, so the mean of a long review starts near 0
        bound = 1.0 / self.embedding_dim
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.classifier.reset_parameters()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.ngrams:  # padding columns, so every order has a row and head can count
            x = F.pad(x, (0, self.ngrams - x.shape[1]))
        ids = torch.cat([x] + [ngram_ids(x, n, self.in_features, self.buckets) for n in range(2, self.ngrams + 1)],
                        dim=1)
        if not self.normalize:
            return self.embedding(ids)
        rows = self.embedding.weight[1:]
        mean, std = rows.mean(0), rows.std(0).clamp_min(1e-6)
        return (self.embedding(ids) - mean) / std

    def mask(self, tokens: int, lengths: torch.Tensor) -> torch.Tensor:
        """``[B, T']``: which rows of ``embed``'s output come from a row's first ``lengths`` tokens."""
        positions = torch.arange(tokens, device=lengths.device)
        return torch.cat([positions[None, :tokens - n + 1] < (lengths[:, None] - n + 1)
                          for n in range(1, self.ngrams + 1)], dim=1)

    def head(self, z: torch.Tensor, lengths: torch.Tensor | None = None, **_: object) -> Output:
        # T' = sum over n of (T - n + 1) rows: recover the token count T
        tokens = (z.shape[1] + self.ngrams * (self.ngrams - 1) // 2) // self.ngrams
        if lengths is None:
            lengths = torch.full((z.shape[0],), tokens, dtype=torch.long, device=z.device)
        mask = self.mask(tokens, lengths.to(z.device)).to(z.dtype)[..., None]
        pooled = (z * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return Output(self.classifier(F.dropout(pooled, self.dropout, self.training)), pooled)
