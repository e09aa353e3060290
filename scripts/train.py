"""Train and test one model; see conf/train.yaml.

    python scripts/train.py regularizer=graph data.label_frac=0.01
    python scripts/train.py -m regularizer=none,graph seed=0,1,2
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nsl_lab.run import find_config_error, train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except Exception as error:
        config_error = find_config_error(error)
        if config_error is None:
            raise
        print(f"nsl_lab: error: {config_error}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("test/acc", float("nan"))


if __name__ == "__main__":
    main()
