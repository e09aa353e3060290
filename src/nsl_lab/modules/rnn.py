from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nsl_lab.errors import check_choice, check_flag, check_integer, check_range
from nsl_lab.modules.backbone import Backbone, Output

Cell = Literal["lstm", "gru"]
Pooling = Literal["max", "mean", "last"]
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNClassifier(Backbone):
    r"""Embedding + (bi)LSTM/GRU + pooling + classifier, for padded token ids.

    .. math::
        e_t = E[x_t],\quad h_{1:T} = \mathrm{RNN}(e_{1:T}),\quad
        u = \mathrm{pool}(h_{1:\ell}),\quad z = \sigma(W_z\, \mathrm{dropout}(u) + b_z),\quad
        \mathrm{logits} = W_c\, \mathrm{dropout}(z) + b_c

    over the first :math:`\ell` (``lengths``) tokens only: sequences are packed, and
    ``max``/``mean`` pooling ignore padding (``last`` takes the final states of both
    directions). ``embed(x)`` returns the word embeddings :math:`e`, the point where an
    adversarial regularizer perturbs the input (Miyato et al., adversarial training on
    word embeddings); ``head(e, lengths=...)`` returns the logits and :math:`z` as the
    hidden layer a graph regularizer compares.

    Args:
        in_features: vocabulary size (id 0 is padding).
        num_classes: number of classes.
        embedding_dim: width of the word embeddings.
        hidden_size: RNN state size per direction.
        cell: ``lstm`` or ``gru``.
        bidirectional: run a backward RNN too.
        num_layers: stacked RNN layers.
        pooling: ``max``, ``mean`` or ``last``.
        projection_size: width of :math:`z`, the hidden layer.
        dropout: dropout on the embeddings, the pooled states and :math:`z`.
    """

    accepts = ("tokens",)
    repr_settings = ("embedding_dim", "hidden_size", "cell", "bidirectional", "num_layers", "pooling",
                     "projection_size", "dropout")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        embedding_dim: int = 64,
        hidden_size: int = 64,
        cell: Cell = "lstm",
        bidirectional: bool = True,
        num_layers: int = 1,
        pooling: Pooling = "max",
        projection_size: int = 64,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        check_choice("backbone.cell", cell, Cell)
        check_choice("backbone.pooling", pooling, Pooling)
        check_range("backbone.dropout", dropout, 0.0, 1.0, high_inclusive=False)
        for name, value in [("in_features", in_features), ("num_classes", num_classes),
                            ("embedding_dim", embedding_dim), ("hidden_size", hidden_size),
                            ("num_layers", num_layers), ("projection_size", projection_size)]:
            check_integer(f"backbone.{name}", value, 1)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.cell, self.bidirectional, self.pooling, self.dropout = cell, check_flag("backbone.bidirectional", bidirectional), pooling, dropout
        self.embedding_dim, self.hidden_size, self.num_layers = embedding_dim, hidden_size, num_layers
        self.projection_size = projection_size
        self.embedding = nn.Embedding(self.in_features, embedding_dim, padding_idx=0)
        self.rnn = CELLS[cell](embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                               bidirectional=self.bidirectional)
        width = hidden_size * (2 if self.bidirectional else 1)
        self.projection = nn.Linear(width, projection_size)
        self.classifier = nn.Linear(projection_size, self.num_classes)

    def reset_parameters(self) -> None:
        for module in (self.embedding, self.rnn, self.projection, self.classifier):
            module.reset_parameters()
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def head(self, z: torch.Tensor, lengths: torch.Tensor | None = None, **_: object) -> Output:
        if lengths is None:
            lengths = torch.full((z.shape[0],), z.shape[1], dtype=torch.long)
        z = F.dropout(z, self.dropout, self.training)
        packed = pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, final = self.rnn(packed)
        if self.pooling == "last":
            final = final[0] if isinstance(final, tuple) else final  # LSTM: (h, c)
            directions = 2 if self.bidirectional else 1
            pooled = final[-directions:].transpose(0, 1).reshape(z.shape[0], -1)
        else:
            padded, _ = pad_packed_sequence(states, batch_first=True)
            mask = (torch.arange(padded.shape[1], device=z.device)[None] < lengths.to(z.device)[:, None])[..., None]
            if self.pooling == "max":
                pooled = padded.masked_fill(~mask, float("-inf")).amax(1)
            else:
                pooled = (padded * mask).sum(1) / lengths.to(z.device)[:, None]
        hidden = torch.tanh(self.projection(F.dropout(pooled, self.dropout, self.training)))
        return Output(self.classifier(F.dropout(hidden, self.dropout, self.training)), hidden)
