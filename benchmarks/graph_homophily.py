"""How well each graph agrees with the labels: the share of edges joining same-label samples.

    python benchmarks/graph_homophily.py

Edge homophily of Cora's and CiteSeer's citation graphs and of IMDB's synthesized review graph
(top-10 cosine kNN over TF-IDF + SVD 256 of the training reviews, the `data=imdb` default).
A graph term can only pass on what the graph knows: this is the ceiling behind the graph
regularizer's gains in benchmarks/cora_label_frac.py and benchmarks/imdb_label_frac.py.
Writes benchmarks/results/graph_homophily.{json,md}.
"""
from __future__ import annotations

import os

import torch

from common import machine, quiet, write


def edge_homophily(y: torch.Tensor, graph) -> dict:
    """Share of edges (both ends labeled) whose ends share a label, plain and weighted."""
    source, target, weight = graph.edges()
    both = (y[source] >= 0) & (y[target] >= 0)
    same = (y[source] == y[target])[both].float()
    weight = weight[both]
    return {"edges": int(both.sum()), "homophily": float(same.mean()),
            "weighted_homophily": float((same * weight).sum() / weight.sum())}


def main() -> None:
    quiet()
    from nsl_lab.datamodules import IMDBDataModule, PlanetoidDataModule

    data_dir = os.environ.get("NSL_LAB_DATA", "data")
    rows = {}
    for name in ("Cora", "CiteSeer"):
        data = PlanetoidDataModule(name, data_dir=data_dir)
        data.setup()
        every_label = data._load().y  # the datamodule's batches hide the labels outside each split
        rows[f"{name} citation graph"] = edge_homophily(every_label, data.graph)
    imdb = IMDBDataModule(data_dir=data_dir)
    imdb.setup()
    rows["IMDB top-10 TF-IDF/SVD kNN (training reviews)"] = edge_homophily(imdb.samples.y, imdb.graph)
    lines = ["| graph | edges | edge homophily | weighted |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['edges']:,} | {100 * r['homophily']:.1f}% | {100 * r['weighted_homophily']:.1f}% |"
              for name, r in rows.items()]
    markdown = "\n".join(["# Edge homophily: share of edges joining same-label samples", "",
                          "Reproduce: `python benchmarks/graph_homophily.py`", "", *lines, "",
                          f"Machine: {machine()}", ""])
    write("graph_homophily", {"graphs": rows, "machine": machine()}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
