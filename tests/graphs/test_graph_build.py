"""Graph building against brute force, file round trips and the build_graph script (TSV, .pt, CSR)."""
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsl_lab.errors import ConfigError
from nsl_lab.graphs.build import (
    GraphSpec, load_graph, read_tsv, save_graph, similarity_graph, symmetrize, word_vector_embeddings, write_tsv,
)
from nsl_lab.graphs.store import load_csr


def brute_force(x: np.ndarray, k: int | None, threshold: float | None) -> dict[tuple[int, int], float]:
    """Every pair's cosine; i picks its k best others (and/or those >= threshold); union of directions."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    n = len(x)
    edges = {}
    for i in range(n):
        others = [j for j in range(n) if j != i]
        chosen = sorted(others, key=lambda j: -similarity[i, j])[:k] if k is not None else others
        for j in chosen:
            if threshold is None or similarity[i, j] >= threshold:
                edges[(i, j)] = edges[(j, i)] = float(similarity[i, j])
    return edges


def as_dict(edge_index: torch.Tensor, weight: torch.Tensor) -> dict[tuple[int, int], float]:
    return {(int(s), int(t)): float(w) for (s, t), w in zip(edge_index.T.tolist(), weight)}


@pytest.mark.parametrize("k, threshold", [(3, None), (None, 0.3), (4, 0.1), (1, None)])
@pytest.mark.parametrize("block_size", [7, 1000])
def test_exact_graph_equals_brute_force(k, threshold, block_size):
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    edge_index, weight = similarity_graph(x, k=k, threshold=threshold, block_size=block_size)
    got, expected = as_dict(edge_index, weight), brute_force(x, k, threshold)
    assert got.keys() == expected.keys()
    assert np.allclose([got[e] for e in expected], list(expected.values()), atol=1e-5)


def test_faiss_hnsw_finds_the_exact_neighbours_on_small_data():
    x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    exact = set(as_dict(*similarity_graph(x, k=5)))
    approximate = set(as_dict(*similarity_graph(x, k=5, method="faiss_hnsw")))
    assert len(exact & approximate) / len(exact) >= 0.95


def test_faiss_ivf_finds_most_exact_neighbours_on_clustered_data():
    # 40 clusters of 100 rows in 16-D: what IVF's lists are for (uniform noise is its worst case).
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((40, 16)) * 3
    x = (centres[np.arange(4000) % 40] + rng.standard_normal((4000, 16))).astype(np.float32)
    exact = set(as_dict(*similarity_graph(x, k=5)))
    approximate = as_dict(*similarity_graph(x, k=5, method="faiss_ivf"))
    assert len(exact & set(approximate)) / len(exact) >= 0.9
    assert all(-1.0 <= w <= 1.0 + 1e-6 for w in approximate.values())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), k=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_graph_is_symmetric_without_self_loops(n, k, seed):
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    if k >= n:  # more neighbours than other rows: one line, not a graph of negative cosines
        with pytest.raises(ConfigError, match=f"graph.k={k} is not below the number of rows \\({n}\\)"):
            similarity_graph(x, k=k, block_size=5)
        return
    edge_index, weight = similarity_graph(x, k=k, block_size=5)
    edges = as_dict(edge_index, weight)
    assert all(s != t for s, t in edges)
    assert all(edges[(t, s)] == w for (s, t), w in edges.items())
    # every node keeps at least k neighbours
    assert torch.bincount(edge_index[0], minlength=n).min() >= k


def test_symmetrize_merges_both_directions_once():
    edge_index, weight = symmetrize(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), 3)
    assert edge_index.tolist() == [[0, 1], [1, 0]] and weight.tolist() == [0.5, 0.5]


def test_tsv_round_trip_with_and_without_node_ids(tmp_path):
    x = np.random.default_rng(2).standard_normal((25, 5)).astype(np.float32)
    edge_index, weight = similarity_graph(x, k=3)
    write_tsv(tmp_path / "g.tsv", edge_index, weight)
    read_index, read_weight = read_tsv(tmp_path / "g.tsv", num_nodes=25)
    assert torch.equal(read_index, edge_index) and torch.allclose(read_weight, weight, atol=1e-6)
    names = [f"review_{i}" for i in range(25)]
    write_tsv(tmp_path / "named.tsv", edge_index, weight, names)
    first = (tmp_path / "named.tsv").read_text().splitlines()[0].split("\t")
    assert first[0] == names[int(edge_index[0, 0])] and len(first) == 3
    shuffled = names[::-1]  # rows are looked up by id, not by position in the file
    read_index, _ = read_tsv(tmp_path / "named.tsv", node_ids=shuffled)
    assert torch.equal(24 - read_index, edge_index)


def test_tsv_without_weights_defaults_to_one(tmp_path):
    (tmp_path / "g.tsv").write_text("0\t1\n1\t2\t0.5\n")
    edge_index, weight = read_tsv(tmp_path / "g.tsv", num_nodes=3)
    assert edge_index.tolist() == [[0, 1], [1, 2]] and weight.tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    "text, message",
    [
        ("0\t1\t0.5\n0\t7\t1\n", "g.tsv:2: unknown node id '7'; allowed: integer rows 0 .. 2"),
        ("0\t1\tnan\n", "g.tsv:1: NaN edge weight 'nan'"),
        ("0\t1\t-0.5\n", "g.tsv:1: negative edge weight '-0.5'"),
        ("0 1 0.5\n", "g.tsv:1: expected 'source<TAB>target[<TAB>weight]'"),
    ],
)
def test_bad_tsv_fails_with_the_line(tmp_path, text, message):
    (tmp_path / "g.tsv").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_tsv(tmp_path / "g.tsv", num_nodes=3)


def test_saved_graph_keeps_parameters(tmp_path):
    edge_index, weight = similarity_graph(np.eye(4, dtype=np.float32) + 0.1, k=2)
    save_graph(tmp_path / "g.pt", edge_index, weight, 4, {"k": 2, "threshold": None})
    loaded_index, loaded_weight, num_nodes, params = load_graph(tmp_path / "g.pt")
    assert torch.equal(loaded_index, edge_index) and torch.equal(loaded_weight, weight)
    assert num_nodes == 4 and params == {"k": 2, "threshold": None}


@pytest.mark.parametrize(
    "settings_, message",
    [
        ({"kind": "knn", "k": None, "threshold": None}, "graph.k and graph.threshold are both null"),
        ({"kind": "knn", "k": 0}, "graph.k=0 is not allowed"),
        ({"kind": "knn", "threshold": 1.5}, "graph.threshold=1.5 is out of range"),
        ({"kind": "knn", "k": None, "threshold": 0.5, "method": "faiss_hnsw"}, "set graph.k"),
        ({"kind": "knn", "kk": 3}, "data.graph.kk is not a graph setting"),
        ({"kind": "tsv"}, "needs data.graph.path"),
        ("grid", "data.graph='grid' is not supported"),
    ],
)
def test_bad_graph_settings(settings_, message):
    with pytest.raises(ConfigError, match=message):
        GraphSpec.parse(settings_)


@pytest.mark.slow  # a fresh Python process: ~20 s of imports
def test_build_graph_script_writes_tsv_and_pt(tmp_path):
    x = np.random.default_rng(3).standard_normal((30, 4)).astype(np.float32)
    np.save(tmp_path / "emb.npy", x)
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_graph.py"), str(tmp_path / "emb.npy"), str(tmp_path / "g.tsv"),
         "--k", "3", "--pt", str(tmp_path / "g.pt")],
        capture_output=True, text=True, check=True,
    )
    assert "30 nodes" in completed.stdout
    edge_index, weight = read_tsv(tmp_path / "g.tsv", num_nodes=30)
    assert as_dict(edge_index, weight).keys() == brute_force(x, 3, None).keys()
    assert load_graph(tmp_path / "g.pt")[3]["k"] == 3
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_graph.py"), str(tmp_path / "emb.npy"), "--k", "3",
                    "--csr", str(tmp_path / "csr")], capture_output=True, text=True, check=True)
    graph = load_csr(tmp_path / "csr")
    assert as_dict(graph.edge_index(), graph.weights).keys() == brute_force(x, 3, None).keys()
    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_graph.py"), str(tmp_path / "emb.npy"), str(tmp_path / "h.tsv"),
         "--k", "0"], capture_output=True, text=True,
    )
    assert bad.returncode == 2 and bad.stderr == "nsl_lab: error: --k=0 is not allowed; it must be an integer >= 1\n"
    # A normal run is quiet: no torch warning about the read-only memory map.
    assert "Warning" not in completed.stderr and "not writable" not in completed.stderr


def test_planetoid_uses_a_knn_graph_built_from_its_features(data_root, cache_dir):
    from nsl_lab.datamodules import PlanetoidDataModule

    data = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir), graph={"kind": "knn", "k": 3})
    data.setup()
    assert data.graph.degree.min() >= 3 and data.graph.num_edges < 6 * data.num_nodes
    natural = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir), graph="natural")
    natural.setup()
    assert natural.graph.num_edges == 10556
    with pytest.raises(ConfigError, match="data.graph.embedding='tfidf_svd' is not supported"):
        PlanetoidDataModule("Cora", graph={"kind": "knn", "embedding": "tfidf_svd"})


@pytest.mark.parametrize("overrides, kind, k", [
    ([], "natural", 10),
    (["data.graph=knn"], "knn", 10),
    (["data.graph.kind=knn", "data.graph.k=5"], "knn", 5),
])
def test_planetoid_graph_overrides_from_the_command_line(overrides, kind, k):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from nsl_lab.compose import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        data = instantiate(compose("train", overrides=["data=citeseer", *overrides]).data)
    assert (data.graph_spec.kind, data.graph_spec.k) == (kind, k)


def topic_documents(per_topic: int = 20, seed: int = 0) -> tuple[list[list[str]], np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = [["cat", "dog", "pet", "fur", "paw"], ["car", "road", "engine", "wheel", "fuel"]]
    documents, topic_of = [], []
    for topic, words in enumerate(topics):
        for _ in range(per_topic):
            tokens = list(rng.choice(words + ["the", "a", "and"], size=12))
            documents.append([str(t) for t in tokens])
            topic_of.append(topic)
    return documents, np.array(topic_of)


def test_word_vector_embeddings_put_same_topic_documents_together():
    documents, topic_of = topic_documents()
    embeddings = word_vector_embeddings(documents, dim=4, window=3)
    assert embeddings.shape == (40, 4) and np.isfinite(embeddings).all()
    assert np.array_equal(embeddings, word_vector_embeddings(documents, dim=4, window=3))  # seeded
    edge_index, _ = similarity_graph(embeddings, k=3)
    source, target = edge_index.numpy()
    assert (topic_of[source] == topic_of[target]).mean() > 0.9


def test_word_vector_settings_are_checked():
    with pytest.raises(ConfigError, match="needs at least 2 words seen twice"):
        word_vector_embeddings([["only"], ["words"]], dim=4)
    with pytest.raises(ConfigError, match="data.graph.window=0 is not allowed; it must be an integer >= 1"):
        GraphSpec.parse({"kind": "knn", "embedding": "word_vectors", "window": 0})


def test_embeddings_use_one_blas_thread_whatever_the_machine_sets():
    """Multi-threaded BLAS sums in another order: the graph would depend on OMP_NUM_THREADS."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from nsl_lab.graphs.build import one_blas_thread

    @one_blas_thread
    def blas_threads():
        return np.array([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"])

    with threadpool_limits(limits=2, user_api="blas"):
        inside = blas_threads()
    assert inside.size and (inside == 1).all()


# -- scripts/build_graph.py in this process: one-line errors, exit code 2, nothing lost ------------
@pytest.fixture(scope="module")
def build_graph_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_graph_script", REPO / "scripts" / "build_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_build_graph(build_graph_script, capfd, monkeypatch):
    """Runs the script's ``main`` on ``args``; returns (exit code, stdout, stderr) with faiss's C++
    output included (capfd). Any exception other than the one-line error fails the test."""
    def run(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        threads = torch.get_num_threads()
        capfd.readouterr()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # any warning (torch's read-only array, ...) fails
                try:
                    code = build_graph_script.main([str(a) for a in args])
                except SystemExit as exit_:  # argparse
                    code = exit_.code
        finally:
            torch.set_num_threads(threads)
        out, err = capfd.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


@pytest.fixture
def embeddings(tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, np.random.default_rng(5).standard_normal((12, 3)).astype(np.float32))
    return path


def one_error(run_result, message):
    code, out, err = run_result
    assert (code, err) == (2, f"nsl_lab: error: {message}\n"), err
    assert out == ""


def test_script_runs_without_warnings_on_the_memory_mapped_input(run_build_graph, embeddings, tmp_path):
    code, out, err = run_build_graph(embeddings, tmp_path / "g.tsv", "--k", 3, "--threads", 1)
    assert code == 0 and err == "" and "12 nodes" in out
    x = np.load(embeddings)
    assert as_dict(*read_tsv(tmp_path / "g.tsv", num_nodes=12)).keys() == brute_force(x, 3, None).keys()


def test_normalize_rows_copies_blocks_of_a_read_only_memory_map(embeddings):
    from nsl_lab.graphs.build import normalize_rows

    mapped = np.load(embeddings, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit = normalize_rows(mapped, block_rows=5)
    x = np.load(embeddings)
    assert np.allclose(unit.numpy(), x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    assert not mapped.flags.writeable  # the input itself is untouched
    nan = np.array(x)
    nan[7, 1] = np.nan
    with pytest.raises(ConfigError, match=re.escape("embeddings contain NaN or inf (row 7)")):
        normalize_rows(nan, block_rows=5)


@pytest.mark.parametrize("write, reason", [
    (lambda p: p.write_text("0\t1\t0.5\n"), "it is not a .npy file"),
    (lambda p: np.save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True),
     "it holds Python objects (dtype object); it needs numbers (int, float or bool)"),
    (lambda p: np.save(p, np.array([["a", "b"], ["c", "d"]])), "it holds <U1 values; it needs numbers (int, float or bool)"),
    (lambda p: np.save(p, np.ones(5)), "it has shape [5]; it needs a 2-d matrix [N, d]"),
    (lambda p: p.write_bytes(b""), "it is not a .npy file"),
])
def test_script_rejects_embeddings_that_are_not_a_matrix_of_numbers(run_build_graph, tmp_path, write, reason):
    path = tmp_path / "bad.npy"
    write(path)
    one_error(run_build_graph(path, tmp_path / "g.tsv"),
              f"embeddings file {path} is not a readable .npy matrix of numbers: {reason}")
    assert not (tmp_path / "g.tsv").exists()


def test_script_rejects_nan_rows_and_keeps_the_previous_output(run_build_graph, tmp_path):
    x = np.ones((4, 2))
    x[2, 0] = np.inf
    np.save(tmp_path / "emb.npy", x)
    (tmp_path / "g.tsv").write_text("previous\n")
    one_error(run_build_graph(tmp_path / "emb.npy", tmp_path / "g.tsv", "--k", 1, "--pt", tmp_path / "new" / "g.pt"),
              "embeddings contain NaN or inf (row 2); every value must be finite")
    assert (tmp_path / "g.tsv").read_text() == "previous\n"
    assert not (tmp_path / "new").exists()  # the folder made for --pt is removed again


def test_script_creates_missing_folders_for_every_output(run_build_graph, embeddings, tmp_path):
    code, _, err = run_build_graph(embeddings, tmp_path / "a" / "b" / "g.tsv", "--k", 2,
                                   "--pt", tmp_path / "c" / "g.pt", "--csr", tmp_path / "d" / "csr")
    assert code == 0 and err == ""
    assert (tmp_path / "a" / "b" / "g.tsv").is_file() and (tmp_path / "c" / "g.pt").is_file()
    assert load_csr(tmp_path / "d" / "csr").num_nodes == 12


@pytest.mark.parametrize("args, message", [
    (["{tmp}"], "output {tmp} is a folder; it must be a file path"),
    (["{tmp}/emb.npy/g.tsv"], "output {tmp}/emb.npy/g.tsv cannot be written: {tmp}/emb.npy is a file, not a folder"),
    (["--csr", "{tmp}/file.txt"], "--csr {tmp}/file.txt is a file; it must be a folder (for indptr.npy, indices.npy, weight.npy)"),
    (["{tmp}/g.tsv", "--pt", "{tmp}"], "--pt {tmp} is a folder; it must be a file path"),
    (["{tmp}/g.tsv", "--pt", "{tmp}/file.txt/g.pt"],
     "--pt {tmp}/file.txt/g.pt cannot be written: {tmp}/file.txt is a file, not a folder"),
    (["/proc/nsl_lab_graph.tsv"], "output /proc/nsl_lab_graph.tsv cannot be written: folder /proc is not writable"),
    (["/proc/nsl_lab_x/g.tsv"], "output /proc/nsl_lab_x/g.tsv cannot be written: folder /proc/nsl_lab_x cannot be created"),
    (["{tmp}/g.tsv", "--pt", "/proc/nsl_lab_graph.pt"],
     "--pt /proc/nsl_lab_graph.pt cannot be written: folder /proc is not writable"),
    (["{tmp}/g.tsv", "--csr", "/proc/nsl_lab_csr"],
     "--csr /proc/nsl_lab_csr cannot be written: folder /proc/nsl_lab_csr cannot be created"),
])
def test_script_checks_output_paths_before_any_work(run_build_graph, embeddings, tmp_path, args, message):
    (tmp_path / "file.txt").write_text("keep\n")
    args = [a.format(tmp=tmp_path) for a in args]
    one_error(run_build_graph(embeddings, *args, "--k", 2), message.format(tmp=tmp_path))
    assert not (tmp_path / "g.tsv").exists()  # nothing written before the bad --pt / --csr was found
    assert (tmp_path / "file.txt").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "file.txt"]


@pytest.mark.parametrize("args, message", [
    (["{emb}"], "output {emb} is the embeddings file; writing there would overwrite the input: give another path"),
    (["--csr", "{emb}"], "--csr {emb} is the embeddings file; writing there would overwrite the input: give another path"),
    (["{tmp}/g.tsv", "--pt", "{emb}"],
     "--pt {emb} is the embeddings file; writing there would overwrite the input: give another path"),
    (["{ids}", "--ids", "{ids}"], "output {ids} is the --ids file; writing there would overwrite the input: give another path"),
    (["{tmp}/g.tsv", "--pt", "{tmp}/g.tsv"], "--pt {tmp}/g.tsv is the same file as output {tmp}/g.tsv; give each output its own path"),
    (["{tmp}/sub/../emb.npy"], "output {tmp}/sub/../emb.npy is the embeddings file; writing there would overwrite the input: "
                               "give another path"),
])
def test_script_never_writes_over_its_input_or_another_output(run_build_graph, embeddings, tmp_path, args, message):
    (tmp_path / "sub").mkdir()
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"n{i}\n" for i in range(12)))
    before, ids_before = embeddings.read_bytes(), ids.read_text()
    fill = {"emb": embeddings, "tmp": tmp_path, "ids": ids}
    one_error(run_build_graph(embeddings, *[a.format(**fill) for a in args], "--k", 2), message.format(**fill))
    assert embeddings.read_bytes() == before and ids.read_text() == ids_before
    assert not (tmp_path / "g.tsv").exists()


def test_script_refuses_the_same_file_given_twice_on_the_command_line(run_build_graph, embeddings, tmp_path):
    """``build_graph.py same.npy same.npy`` (relative paths) leaves the input as it was."""
    before = embeddings.read_bytes()
    one_error(run_build_graph("emb.npy", "emb.npy", cwd=tmp_path),
              "output emb.npy is the embeddings file; writing there would overwrite the input: give another path")
    assert embeddings.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--ids", "{tmp}/missing.txt"], "--ids {tmp}/missing.txt does not exist; it must be a text file with one node id per line"),
    (["--ids", "{tmp}"], "--ids {tmp} is not a file; it must be a text file with one node id per line"),
    (["--ids", "{tmp}/short.txt"], "--ids has 2 lines but the embeddings have 12 rows"),
    (["--threads", "-1"], "--threads=-1 is not allowed; it must be an integer >= 1"),
    (["--threads", "0"], "--threads=0 is not allowed; it must be an integer >= 1"),
    (["--k", "0"], "--k=0 is not allowed; it must be an integer >= 1"),
    (["--k", "12"], "--k=12 is not below the number of rows (12); allowed: 1 <= --k <= 11"),
    (["--k", "500"], "--k=500 is not below the number of rows (12); allowed: 1 <= --k <= 11"),
    (["--block-size", "0"], "--block-size=0 is not allowed; it must be an integer >= 1"),
    (["--threshold", "1.5"], "--threshold=1.5 is out of range; allowed: -1.0 <= --threshold <= 1.0"),
    (["--threshold", "0.5", "--method", "faiss_hnsw"],
     "--method='faiss_hnsw' searches k neighbours; set --k (threshold alone needs 'exact')"),
])
def test_script_errors_name_the_command_line_options(run_build_graph, embeddings, tmp_path, args, message):
    (tmp_path / "short.txt").write_text("a\nb\n")
    one_error(run_build_graph(embeddings, tmp_path / "g.tsv", *[a.format(tmp=tmp_path) for a in args]),
              message.format(tmp=tmp_path))
    assert not (tmp_path / "g.tsv").exists()


@pytest.mark.parametrize("args", [["--k", "1"], ["--k", "30"], ["--threshold", "0.5"]])
def test_script_needs_two_rows_whatever_k(run_build_graph, tmp_path, args):
    np.save(tmp_path / "one.npy", np.ones((1, 3), np.float32))
    one_error(run_build_graph(tmp_path / "one.npy", tmp_path / "g.tsv", *args),
              f"embeddings file {tmp_path / 'one.npy'} has 1 row; a graph needs at least 2 "
              "(a node's neighbours are the other rows)")


def test_faiss_ivf_on_a_tiny_input_is_quiet_and_exact(run_build_graph, tmp_path):
    x = (np.random.default_rng(6).random((5, 3)) + 0.1).astype(np.float32)  # positive cosines: read_tsv wants weights >= 0
    np.save(tmp_path / "five.npy", x)
    code, out, err = run_build_graph(tmp_path / "five.npy", tmp_path / "g.tsv", "--k", 2, "--method", "faiss_ivf")
    assert code == 0 and err == "" and "5 nodes" in out  # no "WARNING clustering 5 points to 1 centroids"
    assert as_dict(*read_tsv(tmp_path / "g.tsv", num_nodes=5)).keys() == brute_force(x, 2, None).keys()
    edge_index, weight = similarity_graph(x, k=2, method="faiss_ivf")
    expected = brute_force(x, 2, None)
    got = as_dict(edge_index, weight)
    assert got.keys() == expected.keys()
    assert np.allclose([got[e] for e in expected], list(expected.values()), atol=1e-5)
