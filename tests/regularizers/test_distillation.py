"""DistillationRegularizer and its GRAND teacher: the loss by hand, the teacher's invariants, errors."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_train
from nsl_lab import Batch, ConfigError, Output
from nsl_lab.compatibility import check_compatibility
from nsl_lab.compose import compose_config
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.modules import FFN, RepresentationLearner
from nsl_lab.regularizers import DistillationRegularizer, GraphData, TrainingStep, train_grand_teacher
from nsl_lab.regularizers import distillation
from nsl_lab.run import build_regularizers

FAST = dict(epochs=60, hidden=8, hops=2)


def two_cliques(size: int = 6, seed: int = 0) -> tuple[torch.Tensor, NeighborGraph, torch.Tensor]:
    """Two cliques of ``size`` nodes with no edge between them. Each node's features are its
    own one-hot id plus noise, so only the graph tells the cliques apart: an unlabeled node's
    features say nothing of any labeled node's. One labeled node per clique."""
    generator = torch.Generator().manual_seed(seed)
    pairs = [(a, b) for a in range(size) for b in range(size) if a != b]
    edges = torch.tensor(pairs + [(a + size, b + size) for a, b in pairs]).t()
    features = torch.eye(2 * size) + 0.1 * torch.rand(2 * size, 2 * size, generator=generator)
    labels = torch.full((2 * size,), -1)
    labels[0], labels[size] = 0, 1
    return features, NeighborGraph(edges, 2 * size), labels


def step_of(batch: Batch, logits: torch.Tensor) -> TrainingStep:
    return TrainingStep(batch, Output(logits, logits), backbone=None, num_classes=logits.shape[1])


def test_loss_is_the_scaled_kl_to_the_teacher_by_hand(monkeypatch):
    teacher = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    monkeypatch.setattr(distillation, "train_grand_teacher", lambda *args, **kwargs: teacher)
    regularizer = DistillationRegularizer(multiplier=3.0, temperature=2.0)
    graph = NeighborGraph(torch.tensor([[0], [1]]), 3)
    regularizer.setup(GraphData(graph, torch.tensor([0, -1, -1]), 2, features=torch.zeros(3, 1)))
    logits = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    batch = Batch(x=torch.zeros(2, 1), y=torch.tensor([0, -1]), index=torch.tensor([2, 0]))
    # Rows 2 and 0 of the teacher, labeled or not; KL(p || softmax(z / 2)) * 2^2, mean over rows.
    expected = 0.0
    for row, z in zip([2, 0], logits):
        q = torch.softmax(z / 2.0, 0)
        expected += float((teacher[row] * (teacher[row].log() - q.log())).sum())
    assert regularizer(step_of(batch, logits)).item() == pytest.approx(3.0 * 4.0 * expected / 2, rel=1e-5)


def test_the_loss_is_zero_exactly_when_the_student_matches_the_teacher(monkeypatch):
    teacher = torch.tensor([[0.9, 0.1], [0.25, 0.75]])
    monkeypatch.setattr(distillation, "train_grand_teacher", lambda *args, **kwargs: teacher)
    regularizer = DistillationRegularizer()
    regularizer.setup(GraphData(NeighborGraph(torch.tensor([[0], [1]]), 2), torch.tensor([0, 1]), 2,
                                features=torch.zeros(2, 1)))
    batch = Batch(x=torch.zeros(2, 1), y=torch.tensor([0, 1]), index=torch.tensor([0, 1]))
    assert regularizer(step_of(batch, teacher.log())).item() == pytest.approx(0.0, abs=1e-6)
    assert regularizer(step_of(batch, torch.zeros(2, 2))).item() > 0.1


def test_the_teacher_separates_cliques_that_only_the_graph_tells_apart():
    features, graph, labels = two_cliques()
    probabilities = train_grand_teacher(features, graph, labels, 2, **FAST)
    assert probabilities.shape == (12, 2)
    assert torch.allclose(probabilities.sum(1), torch.ones(12), atol=1e-5)
    assert probabilities.argmax(1).tolist() == [0] * 6 + [1] * 6


def test_the_teacher_is_seeded_and_leaves_the_callers_random_stream_alone():
    features, graph, labels = two_cliques()
    torch.manual_seed(123)
    first = train_grand_teacher(features, graph, labels, 2, seed=1, **FAST)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the teacher drew nothing from the caller's stream
    assert torch.equal(train_grand_teacher(features, graph, labels, 2, seed=1, **FAST), first)
    assert not torch.equal(train_grand_teacher(features, graph, labels, 2, seed=2, **FAST), first)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), hops=st.integers(0, 3))
def test_sparse_and_dense_features_train_the_same_teacher(seed, hops):
    # Without input dropout the two paths (a dense product, a sparse one) draw the same masks.
    features, graph, labels = two_cliques(seed=seed)
    features[features < 0.5] = 0.0
    settings = dict(epochs=5, hidden=4, hops=hops, seed=seed, input_dropout=0.0)
    dense = train_grand_teacher(features, graph, labels, 2, **settings)
    sparse = train_grand_teacher(features.to_sparse(), graph, labels, 2, **settings)
    assert torch.allclose(dense, sparse, atol=1e-5)
    assert bool(((dense >= 0) & (dense <= 1)).all())


def test_setup_trains_one_teacher_per_fit_and_reads_features_through_batch_rows(monkeypatch):
    calls = []

    def fake_teacher(features, graph, labels, num_classes, **settings):
        calls.append(features.clone())
        return torch.full((graph.num_nodes, num_classes), 1 / num_classes)

    monkeypatch.setattr(distillation, "train_grand_teacher", fake_teacher)
    features, graph, labels = two_cliques()
    data = GraphData(graph, labels, 2, batch_rows=lambda rows: Batch(x=features[rows], y=labels[rows], index=rows),
                     eval_batch_size=5)
    regularizer = DistillationRegularizer()
    regularizer.setup(data)
    regularizer.setup(data)  # DDP sets up twice before the fit: the same teacher
    assert len(calls) == 1 and torch.equal(calls[0], features)
    regularizer.setup(GraphData(graph, labels.clone(), 2, features=features))  # another fit's labels
    assert len(calls) == 2


def test_errors_name_the_bad_value():
    with pytest.raises(ConfigError, match="^temperature=0.0 is out of range"):
        DistillationRegularizer(temperature=0.0)
    with pytest.raises(ConfigError, match="^teacher_drop_node=1.0 is out of range"):
        DistillationRegularizer(teacher_drop_node=1.0)
    with pytest.raises(ConfigError, match="^teacher_epochs=0 is not allowed"):
        DistillationRegularizer(teacher_epochs=0)
    with pytest.raises(ConfigError, match="needs a graph; this data has none"):
        DistillationRegularizer().setup(GraphData(None, torch.tensor([0]), 2))
    graph = NeighborGraph(torch.tensor([[0], [1]]), 2)
    with pytest.raises(ConfigError, match="provides none"):
        DistillationRegularizer().setup(GraphData(graph, torch.tensor([0, -1]), 2))
    tokens = GraphData(graph, torch.tensor([0, -1]), 2,
                       batch_rows=lambda rows: Batch(x=torch.ones(len(rows), 4, dtype=torch.long), y=rows, index=rows))
    with pytest.raises(ConfigError, match="propagates feature inputs, and this data gives torch.int64"):
        DistillationRegularizer().setup(tokens)
    with pytest.raises(ConfigError, match="needs labeled nodes"):
        train_grand_teacher(torch.zeros(2, 1), graph, torch.tensor([-1, -1]), 2)
    batch = Batch(x=torch.zeros(1, 1), y=torch.tensor([-1]), index=torch.tensor([0]))
    with pytest.raises(ConfigError, match=r"has no teacher yet: call setup\(graph_data\) first"):
        DistillationRegularizer()(step_of(batch, torch.zeros(1, 2)))


def test_label_free_pretraining_refuses_it():
    with pytest.raises(ConfigError, match="distill"):
        RepresentationLearner(FFN(4, 2, hidden_sizes=[8]), {"distill": DistillationRegularizer()})


def test_repr_names_the_teacher_settings():
    text = repr(DistillationRegularizer(multiplier=0.5, teacher_hops=4))
    assert text.startswith("DistillationRegularizer(multiplier=0.5, temperature=1.0, seed=0, teacher_epochs=1000")
    assert "teacher_hops=4" in text


def test_token_data_is_refused_before_any_data_loads(tmp_path):
    cfg = compose_config(["data=imdb", "backbone=rnn", "regularizer=distill"], tmp_path)
    with pytest.raises(ConfigError, match=r"^regularizer.distill \(DistillationRegularizer\) works on features or "
                                          r"images, but data \(IMDBDataModule\) gives tokens$"):
        check_compatibility(cfg, build_regularizers(cfg.regularizer))
    cfg = compose_config(["experiment=cora_distill"], tmp_path)
    check_compatibility(cfg, build_regularizers(cfg.regularizer))  # Cora's features: fine


@pytest.mark.slow
def test_the_preset_trains_a_teacher_then_the_student(tmp_path, data_root, cache_dir):
    _, metrics = run_train(["experiment=cora_distill", "debug=fast", "logger=none", "regularizer.distill.teacher_epochs=3"],
                           tmp_path / "run", cache_dir, data_root, in_process=True)
    assert metrics is not None and 0.0 <= metrics["test/acc"] <= 1.0
    assert "distill: GRAND teacher trained on 140 labeled nodes" in (tmp_path / "run" / "train.log").read_text()
