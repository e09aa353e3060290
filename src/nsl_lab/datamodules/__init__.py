from nsl_lab.datamodules.custom import CustomDataModule
from nsl_lab.datamodules.imdb import IMDBDataModule
from nsl_lab.datamodules.label_fraction import stratified_label_subset
from nsl_lab.datamodules.planetoid import PlanetoidDataModule
from nsl_lab.datamodules.samples import SampleDataModule

__all__ = ["CustomDataModule", "IMDBDataModule", "PlanetoidDataModule", "SampleDataModule", "stratified_label_subset"]
