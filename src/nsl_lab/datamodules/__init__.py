from nsl_lab.datamodules.images import Cifar10DataModule, DigitsDataModule, ImageDataModule
from nsl_lab.datamodules.label_fraction import stratified_label_subset
from nsl_lab.datamodules.planetoid import PlanetoidDataModule

__all__ = ["Cifar10DataModule", "DigitsDataModule", "ImageDataModule", "PlanetoidDataModule", "stratified_label_subset"]
