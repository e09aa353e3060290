from nsl_lab.datamodules.label_fraction import stratified_label_subset
from nsl_lab.datamodules.planetoid import PlanetoidDataModule

__all__ = ["PlanetoidDataModule", "stratified_label_subset"]
