"""How well each graph agrees with the labels, and what it can teach from 1% of them.

    python benchmarks/graph_homophily.py

For Cora's and CiteSeer's citation graphs and IMDB's synthesized review graph (top-10 cosine
kNN over TF-IDF + SVD 256 of the training reviews, the `data=imdb` default, and over word vectors):
- edge homophily, the share of edges joining same-label samples;
- label propagation (Zhou et al. 2004: F <- alpha S F + (1 - alpha) Y, S = D^-1/2 A D^-1/2,
  alpha 0.9, 50 steps) from the labels the datamodule keeps at label_frac 0.01, seed 0, scored
  on the nodes it did not see labeled (Cora/CiteSeer: the 1000 test nodes; IMDB: the other
  training reviews, validation included: the graph joins training reviews only).
Both say what the graph alone knows about the labels, beside what the base model learns from
the features (benchmarks/cora_label_frac.py, benchmarks/imdb_label_frac.py).
Writes benchmarks/results/graph_homophily.{json,md}.
"""
from __future__ import annotations

import argparse
import os

import torch

from common import machine, quiet, run_main, write


def edge_homophily(y: torch.Tensor, graph) -> dict:
    """Share of edges (both ends labeled) whose ends share a label, plain and weighted."""
    source, target, weight = graph.edges()
    both = (y[source] >= 0) & (y[target] >= 0)
    same = (y[source] == y[target])[both].float()
    weight = weight[both]
    return {"edges": int(both.sum()), "homophily": float(same.mean()),
            "weighted_homophily": float((same * weight).sum() / weight.sum())}


def propagation_accuracy(graph, seeds, labels, scored, num_classes) -> dict:
    from nsl_lab.graphs.propagation import label_propagation

    seed_labels = torch.full_like(labels, -1)
    seed_labels[seeds] = labels[seeds]
    predicted = label_propagation(graph, seed_labels, num_classes).argmax(1)
    return {"seeds": int(seeds.numel()), "scored": int(scored.numel()),
            "label_propagation_acc": float((predicted[scored] == labels[scored]).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    quiet()
    from nsl_lab.datamodules import IMDBDataModule, PlanetoidDataModule

    data_dir = os.environ.get("NSL_LAB_DATA", "data")
    rows = {}
    for name in ("Cora", "CiteSeer"):
        data = PlanetoidDataModule(name, data_dir=data_dir)
        data.setup()
        every_label = data._load().y  # the datamodule's batches hide the labels outside each split
        rows[f"{name} citation graph"] = edge_homophily(every_label, data.graph)
        one_percent = PlanetoidDataModule(name, data_dir=data_dir, label_frac=0.01, seed=0)
        one_percent.setup()
        test_nodes = one_percent._batches["test"].labeled.nonzero().flatten()
        rows[f"{name} citation graph"].update(propagation_accuracy(
            data.graph, one_percent.labeled_index, every_label, test_nodes, one_percent.num_classes))
    for embedding, title in [("tfidf_svd", "TF-IDF/SVD 256"), ("word_vectors", "word vectors (PPMI, window 10)")]:
        imdb = IMDBDataModule(data_dir=data_dir, label_frac=0.01, seed=0, graph={"kind": "knn", "embedding": embedding})
        imdb.setup()
        y = imdb.samples.y
        unlabeled_reviews = torch.ones(len(y), dtype=torch.bool)
        unlabeled_reviews[imdb.labeled_index] = False
        unlabeled_reviews[imdb.rows["test"]] = False
        rows[f"IMDB top-10 kNN over {title} (training reviews)"] = {
            **edge_homophily(y, imdb.graph),
            **propagation_accuracy(imdb.graph, imdb.labeled_index, y, unlabeled_reviews.nonzero().flatten(), 2)}
    lines = ["| graph | edges | edge homophily | weighted | label propagation from 1% labels (seeds -> scored) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['edges']:,} | {100 * r['homophily']:.1f}% | {100 * r['weighted_homophily']:.1f}% | "
              f"{100 * r['label_propagation_acc']:.1f}% ({r['seeds']:,} -> {r['scored']:,}) |"
              for name, r in rows.items()]
    markdown = "\n".join(["# Edge homophily and label propagation", "",
                          "Reproduce: `python benchmarks/graph_homophily.py`", "", *lines, "",
                          f"Machine: {machine()}", ""])
    write("graph_homophily", {"graphs": rows, "machine": machine()}, markdown)  # prints the Markdown too


if __name__ == "__main__":
    run_main(main)
