"""The FFN backbone's fast paths: its dropout and its sparse first layer."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nsl_lab.errors import ConfigError
from nsl_lab.modules import FFN, StructuredLearner
from nsl_lab.modules.dropout import dropout
from nsl_lab.modules.ffn import linear_any, transposed_csr


def test_dropout_keeps_the_right_share_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    out = dropout(x, 0.6, True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.4) < 0.005  # 200,000 draws: 5 sigma is ~0.0055
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.4))
    assert abs(out.mean().item() - 1.0) < 0.015  # inverted dropout keeps the expectation


def test_dropout_is_the_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(7, 3)
    assert dropout(x, 0.5, False) is x
    assert dropout(x, 0.0, True) is x


def test_dropout_follows_the_seed_and_masks_the_gradient():
    x = torch.randn(33, 5, requires_grad=True)  # an odd count: the last 64-bit draw is cut
    torch.manual_seed(3)
    first = dropout(x, 0.3, True)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(x, 0.3, True))
    first.sum().backward()
    assert torch.equal(x.grad, (first != 0).float() / 0.7)


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_dropout_share_matches_p(p, seed):
    torch.manual_seed(seed)
    kept = (dropout(torch.ones(100_000), p, True) != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.01  # binomial sd <= 0.0016


def sparse_input(rows: int, columns: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dense = torch.rand(rows, columns, generator=generator)
    return dense * (torch.rand(rows, columns, generator=generator) < 0.15)


def test_transposed_csr_is_the_transpose():
    dense = sparse_input(9, 6, 0)
    assert torch.equal(transposed_csr(dense.to_sparse().coalesce()).to_dense(), dense.t())


def test_sparse_first_layer_matches_the_dense_layer_values_and_gradients():
    dense = sparse_input(40, 25, 1)
    layer = nn.Linear(25, 6)
    sparse_out = linear_any(layer, dense.to_sparse())
    sparse_out.pow(2).sum().backward()
    sparse_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    dense_out = layer(dense)
    dense_out.pow(2).sum().backward()
    assert torch.allclose(sparse_out, dense_out, atol=1e-6)
    for sparse_grad, param in zip(sparse_grads, layer.parameters()):
        assert torch.allclose(sparse_grad, param.grad, atol=1e-5)


def test_ffn_gives_the_same_logits_for_sparse_and_dense_features():
    dense = sparse_input(30, 20, 2)
    model = FFN(20, 4, hidden_sizes=[16], dropout=0.5, layer_norm=True, projection_size=8).eval()
    assert torch.allclose(model(dense.to_sparse()).logits, model(dense).logits, atol=1e-5)


@pytest.mark.parametrize("every,expected", [(1, 12), (5, 3)])
def test_training_terms_are_logged_on_written_steps_and_the_last(every, expected):
    """Steps the logger never writes skip self.log; the written ones and the last keep every term."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from nsl_lab.batch import Batch
    from nsl_lab.modules import StructuredLearner

    class Recorder(StructuredLearner):
        def log(self, name, value, *args, **kwargs):
            if name == "train/loss":
                self.logged_steps.append(self.trainer.global_step)
            super().log(name, value, *args, **kwargs)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 5), torch.randint(0, 3, (24,)), torch.arange(24))
    loader = DataLoader(data, batch_size=6, collate_fn=lambda items: Batch(*map(torch.stack, zip(*items))))
    learner = Recorder(FFN(5, 3, hidden_sizes=[8]), num_classes=3)
    learner.logged_steps = []
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=every, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(learner, train_dataloaders=loader)
    # 4 steps per epoch, 12 in all: every step, or steps 5 and 10 (1-based) and the last.
    assert len(learner.logged_steps) == expected
    assert learner.logged_steps[-1] == 11
    assert "train/loss" in trainer.logged_metrics


@pytest.mark.parametrize("hidden_sizes", ["abc", 64])
def test_hidden_sizes_that_are_not_a_list_are_named_whole(hidden_sizes):
    with pytest.raises(ConfigError, match=rf"^backbone.hidden_sizes={hidden_sizes!r} is not allowed; it must be a list"):
        FFN(4, 2, hidden_sizes=hidden_sizes)


def test_restore_best_must_be_a_flag():
    with pytest.raises(ConfigError, match="learner.restore_best='off' is not allowed; it must be true or false"):
        StructuredLearner(FFN(4, 2), restore_best="off")
