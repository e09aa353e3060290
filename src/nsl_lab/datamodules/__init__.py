from nsl_lab.datamodules.custom import CustomDataModule
from nsl_lab.datamodules.digits_graph import DigitsGraphDataModule
from nsl_lab.datamodules.images import Cifar10DataModule, DigitsDataModule, ImageDataModule
from nsl_lab.datamodules.imdb import IMDBDataModule
from nsl_lab.datamodules.label_fraction import stratified_label_subset
from nsl_lab.datamodules.ogb import OGBDataModule
from nsl_lab.datamodules.planetoid import PlanetoidDataModule
from nsl_lab.datamodules.samples import SampleDataModule
from nsl_lab.datamodules.synthetic_graph import SyntheticGraphDataModule

__all__ = [
    "Cifar10DataModule", "CustomDataModule", "DigitsDataModule", "DigitsGraphDataModule", "IMDBDataModule",
    "ImageDataModule", "OGBDataModule", "PlanetoidDataModule", "SampleDataModule", "SyntheticGraphDataModule",
    "stratified_label_subset",
]
