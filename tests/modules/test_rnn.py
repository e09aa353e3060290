"""The RNN backbone: shapes, the embedding perturbation point and padding invariance."""
import pytest
import torch

from nsl_lab.errors import ConfigError
from nsl_lab.modules import Output, RNNClassifier


@pytest.mark.parametrize("cell, bidirectional, pooling", [("lstm", True, "max"), ("gru", False, "mean"), ("lstm", True, "last")])
def test_padding_never_changes_the_output(cell, bidirectional, pooling):
    torch.manual_seed(0)
    model = RNNClassifier(30, 3, embedding_dim=8, hidden_size=6, cell=cell, bidirectional=bidirectional,
                          pooling=pooling, projection_size=5).eval()
    x = torch.randint(1, 30, (4, 7))
    lengths = torch.tensor([7, 3, 5, 1])
    x = x.masked_fill(torch.arange(7)[None] >= lengths[:, None], 0)
    out = model(x, lengths=lengths)
    assert isinstance(out, Output) and out.logits.shape == (4, 3) and out.hidden.shape == (4, 5)
    padded = torch.cat([x, torch.zeros(4, 5, dtype=torch.long)], 1)
    assert torch.allclose(model(padded, lengths=lengths).logits, out.logits, atol=1e-6)
    # each row alone gives the same result as in the batch (packing ignores the others' padding)
    alone = model(x[1:2, :3], lengths=lengths[1:2])
    assert torch.allclose(alone.logits, out.logits[1:2], atol=1e-6)


def test_embed_is_the_perturbation_point():
    torch.manual_seed(0)
    model = RNNClassifier(20, 2, embedding_dim=4, hidden_size=3, dropout=0.0).eval()
    x, lengths = torch.randint(1, 20, (2, 5)), torch.tensor([5, 4])
    embedded = model.embed(x)
    assert embedded.shape == (2, 5, 4)
    assert torch.equal(model.head(embedded, lengths=lengths).logits, model(x, lengths=lengths).logits)
    delta = torch.zeros_like(embedded, requires_grad=True)
    model.head(embedded + delta, lengths=lengths).logits.sum().backward()
    assert delta.grad is not None and delta.grad[:, :4].abs().sum() > 0


def test_bad_settings_fail_clearly():
    with pytest.raises(ConfigError, match="backbone.cell='rnn' is not supported"):
        RNNClassifier(10, 2, cell="rnn")
    with pytest.raises(ConfigError, match="backbone.pooling='sum' is not supported"):
        RNNClassifier(10, 2, pooling="sum")
    with pytest.raises(ConfigError, match="backbone.bidirectional='no' is not allowed; it must be true or false"):
        RNNClassifier(10, 2, bidirectional="no")
