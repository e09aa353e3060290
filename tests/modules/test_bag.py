"""The bag-of-n-grams backbone: the mean of word and hashed bigram embeddings, by hand."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab.errors import ConfigError
from nsl_lab.modules import BagOfNgrams, Output
from nsl_lab.modules.bag import ngram_ids


def test_logits_are_the_linear_map_of_the_mean_of_word_and_bigram_vectors():
    model = BagOfNgrams(10, 2, embedding_dim=3, ngrams=2, buckets=7).eval()
    table = model.embedding.weight.detach()
    x, lengths = torch.tensor([[4, 2, 9, 0, 0]]), torch.tensor([3])
    # bigram (a, b) hashes to 10 + (a + 1_000_003 b) mod 7
    bigrams = [10 + (4 + 1_000_003 * 2) % 7, 10 + (2 + 1_000_003 * 9) % 7]
    mean = (table[4] + table[2] + table[9] + table[bigrams[0]] + table[bigrams[1]]) / 5
    out = model(x, lengths=lengths)
    assert isinstance(out, Output) and torch.allclose(out.hidden[0], mean, atol=1e-6)
    assert torch.allclose(out.logits[0], model.classifier.weight @ mean + model.classifier.bias, atol=1e-6)


def test_a_bigram_has_one_id_wherever_it_occurs():
    ids = ngram_ids(torch.tensor([[5, 6, 5, 6], [1, 5, 6, 2]]), 2, vocab_size=100, buckets=1000)
    assert ids.shape == (2, 3) and ids[0, 0] == ids[0, 2] == ids[1, 1]
    assert ids[0, 0] != ids[0, 1]  # (5, 6) and (6, 5) differ: order counts
    assert bool(((ids >= 100) & (ids < 1100)).all())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 29), min_size=1, max_size=8), st.integers(0, 5), st.integers(1, 3))
def test_padding_never_changes_the_output(tokens, extra, ngrams):
    torch.manual_seed(0)
    model = BagOfNgrams(30, 3, embedding_dim=4, ngrams=ngrams, buckets=11).eval()
    x, lengths = torch.tensor([tokens]), torch.tensor([len(tokens)])
    padded = torch.cat([x, torch.zeros(1, extra, dtype=torch.long)], 1)
    assert torch.allclose(model(padded, lengths=lengths).logits, model(x, lengths=lengths).logits, atol=1e-6)


def test_embed_is_the_perturbation_point():
    model = BagOfNgrams(20, 2, embedding_dim=4, buckets=5).eval()
    x, lengths = torch.randint(1, 20, (2, 6)), torch.tensor([6, 4])
    embedded = model.embed(x)
    assert embedded.shape == (2, 6 + 5, 4)
    delta = torch.zeros_like(embedded, requires_grad=True)
    model.head(embedded + delta, lengths=lengths).logits.sum().backward()
    # rows past a review's length (its padding and the bigrams that reach into it) get no gradient
    assert delta.grad[1, :4].abs().sum() > 0 and delta.grad[1, 4:6].abs().sum() == 0
    assert delta.grad[1, 6:9].abs().sum() > 0 and delta.grad[1, 9:].abs().sum() == 0


def test_bad_settings_fail_clearly():
    with pytest.raises(ConfigError, match="backbone.ngrams"):
        BagOfNgrams(10, 2, ngrams=4)
    with pytest.raises(ConfigError, match="backbone.buckets"):
        BagOfNgrams(10, 2, buckets=0)
    # a string flag would be truthy: 'off' must not switch the normalization on
    with pytest.raises(ConfigError, match="backbone.normalize='off' is not allowed; it must be true or false"):
        BagOfNgrams(10, 2, normalize="off")


def test_normalized_vectors_have_unit_variance_over_the_table():
    model = BagOfNgrams(50, 2, embedding_dim=3, ngrams=1, normalize=True).eval()
    with torch.no_grad():
        model.embedding.weight.mul_(7.0).add_(2.0)  # training grew and shifted the vectors
    every_row = model.embed(torch.arange(1, 50)[None])[0]
    assert torch.allclose(every_row.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(every_row.std(0), torch.ones(3), atol=1e-5)
