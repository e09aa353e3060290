"""Compose and run configs from Python (benchmarks, notebooks) without the Hydra CLI."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str], output_dir: str | Path, conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, writing into ``output_dir``."""
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def run_overrides(overrides: list[str], output_dir: str | Path) -> dict[str, float]:
    """Trains and tests one configuration in this process; returns its metrics."""
    from nsl_lab.run import train

    return train(compose_config(overrides, output_dir), output_dir)
