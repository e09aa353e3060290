from __future__ import annotations

import warnings
from typing import Literal, Sequence

import torch
from torch import nn

from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.modules.dropout import dropout
from nsl_lab.modules.backbone import Backbone, Output

Activation = Literal["relu", "elu", "gelu", "tanh"]
ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh}


def sparse_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout on the stored values of a sparse COO tensor."""
    if not training or p == 0.0:
        return x
    x = x.coalesce()
    return torch.sparse_coo_tensor(
        x.indices(), dropout(x.values(), p, True), x.shape, check_invariants=False
    )


def transposed_csr(x: torch.Tensor) -> torch.Tensor:
    """:math:`x^T` in CSR layout, for a coalesced (row-major) sparse COO ``x``."""
    row, column = x.indices()
    # Coalesced entries are sorted by row: a stable sort by column gives x^T's row order.
    order = torch.argsort(column, stable=True)
    crow = torch.zeros(x.shape[1] + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.bincount(column, minlength=x.shape[1]).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is noise here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, row[order], x.values()[order], (x.shape[1], x.shape[0]))


class SparseLinearFunction(torch.autograd.Function):
    r""":math:`y = x W^T + b` for a sparse COO input that needs no gradient.

    Both products run on CSR: :math:`xW^T` forward and :math:`\nabla_W = (x^T \nabla_y)^T`
    backward, about 4x faster on the CPU than the COO kernels autograd would pick (Cora's
    bag-of-words layer: ~2.5 ms instead of ~10 ms per step, forward and backward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.coalesce()
        ctx.x = x  # a constant input: no autograd bookkeeping needed
        with warnings.catch_warnings():  # "sparse CSR support is in beta" is noise here
            warnings.simplefilter("ignore", UserWarning)
            # A contiguous right-hand side takes torch's fast sparse kernel.
            return torch.addmm(bias, x.to_sparse_csr(), weight.t().contiguous())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_weight = (transposed_csr(ctx.x) @ grad).t().contiguous() if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return None, grad_weight, grad_bias


def linear_any(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for dense or sparse COO ``x``."""
    if x.is_sparse:
        # Bag-of-words features are ~1% dense: a sparse product is much faster.
        if x.requires_grad:
            return torch.sparse.mm(x, layer.weight.t()) + layer.bias
        return SparseLinearFunction.apply(x, layer.weight, layer.bias)
    return layer(x)


class FFN(Backbone):
    r"""Feed-forward classifier, the backbone for feature vectors.

    .. math::
        h_0 = \mathrm{dropout}_\text{in}(x),\quad
        h_{l+1} = \mathrm{dropout}(\mathrm{norm}(\sigma(W_l h_l + b_l))),\quad
        z = W_z h_L + b_z \ (\text{or } z = h_L),\quad \mathrm{logits} = W_c z + b_c

    ``embed`` is the identity (perturbations apply to the raw features); ``head`` returns
    the logits and :math:`z` as the hidden (penultimate) layer. With ``projection_size``
    set, :math:`z` is a linear projection of the last hidden layer (Graph-MLP's
    architecture, where a contrastive loss shapes :math:`z`). ``norm`` is LayerNorm when
    ``layer_norm`` is set. Sparse COO inputs (bag-of-words) go through a sparse first layer.

    Args:
        in_features: input dimension.
        num_classes: number of output classes.
        hidden_sizes: widths of the hidden layers (empty = logistic regression).
        dropout: dropout probability after every hidden layer.
        input_dropout: dropout probability on the input features.
        activation: one of ``relu``, ``elu``, ``gelu``, ``tanh``.
        layer_norm: LayerNorm after every hidden activation.
        projection_size: width of a linear projection before the classifier, the hidden
            layer :math:`z` (none: the last hidden layer is :math:`z`).

    Shapes: ``x [N, in_features]`` (dense or sparse COO) -> ``logits [N, num_classes]``,
    ``hidden [N, projection_size or hidden_sizes[-1]]``.
    """

    repr_settings = ("hidden_sizes", "dropout", "input_dropout", "activation", "layer_norm", "projection_size")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (256,),
        dropout: float = 0.5,
        input_dropout: float = 0.0,
        activation: Activation = "relu",
        layer_norm: bool = False,
        projection_size: int | None = None,
    ) -> None:
        super().__init__()
        check_choice("backbone.activation", activation, Activation)
        check_range("backbone.dropout", dropout, 0.0, 1.0, high_inclusive=False)
        check_range("backbone.input_dropout", input_dropout, 0.0, 1.0, high_inclusive=False)
        check_integer("backbone.in_features", in_features, 1)
        check_integer("backbone.num_classes", num_classes, 1)
        if isinstance(hidden_sizes, (str, bytes)) or not hasattr(hidden_sizes, "__iter__"):
            raise ConfigError(f"backbone.hidden_sizes={hidden_sizes!r} is not allowed; it must be a list of integers "
                              ">= 1, e.g. [256] (empty: logistic regression)", "backbone.hidden_sizes")
        hidden_sizes = list(hidden_sizes)
        for width in hidden_sizes:
            check_integer("backbone.hidden_sizes", width, 1)
        check_integer("backbone.projection_size", projection_size, 1, optional=True)
        if projection_size is not None and not hidden_sizes:
            raise ConfigError(f"backbone.projection_size={projection_size} needs hidden layers (hidden_sizes)",
                              "backbone.projection_size")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.hidden_sizes, self.dropout, self.input_dropout = hidden_sizes, dropout, input_dropout
        self.activation, self.layer_norm, self.projection_size = activation, layer_norm, projection_size
        widths = [self.in_features, *hidden_sizes]
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList((nn.LayerNorm(h) if layer_norm else nn.Identity()) for h in hidden_sizes)
        self.act = ACTIVATIONS[activation]()
        self.projection = nn.Linear(widths[-1], projection_size) if projection_size else None
        self.classifier = nn.Linear(projection_size or widths[-1], self.num_classes)

    def head(self, z: torch.Tensor, **_: object) -> Output:
        if z.is_sparse:
            h = sparse_dropout(z, self.input_dropout, self.training)
        else:
            h = dropout(z, self.input_dropout, self.training)
        for layer, norm in zip(self.hidden_layers, self.norms):
            h = dropout(norm(self.act(linear_any(layer, h))), self.dropout, self.training)
        if self.projection is not None:
            h = self.projection(h)
        return Output(linear_any(self.classifier, h), h)
