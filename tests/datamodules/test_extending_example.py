"""The large-graph datamodule of docs/extending.md runs as written."""
import re

import numpy as np
import torch

from conftest import REPO
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import save_csr, write_features


def test_the_documented_large_graph_datamodule_batches_sampled_neighbours(tmp_path):
    text = (REPO / "docs" / "extending.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "class MyLargeGraph" in block)
    namespace: dict = {}
    exec(compile(code, "docs/extending.md", "exec"), namespace)
    features = write_features(tmp_path / "features.npy", 40, 3)
    features[:] = np.arange(120, dtype=np.float32).reshape(40, 3)
    features.flush()
    np.save(tmp_path / "labels.npy", np.arange(40) % 2)
    ring = torch.stack([torch.arange(40), (torch.arange(40) + 1) % 40])
    save_csr(tmp_path, NeighborGraph(ring, 40))
    data = namespace["MyLargeGraph"](str(tmp_path), cache_dir=str(tmp_path / "cache"), neighbors=1, batch_size=8,
                                     include_unlabeled=True)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch.x.shape == (8, 3) and torch.equal(batch.neighbors.x[:, 0], 3.0 * ((batch.index + 1) % 40))
