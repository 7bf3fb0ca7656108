"""Data: MNIST, Fashion-MNIST, Frey Face, CIFAR-10, and your own images (a folder of PNG/JPEG
files, or a .npy/.npz array) as Lightning data modules."""

from vae_lightning.errors import DataError

from .array import ArrayDataModule
from .cifar import CIFAR10DataModule
from .datamodules import (
    FashionMNISTDataModule,
    FreyFaceDataModule,
    MNISTDataModule,
    VAEDataModule,
)
from .folder import FolderDataModule

__all__ = [
    "ArrayDataModule",
    "CIFAR10DataModule",
    "DataError",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "FreyFaceDataModule",
    "MNISTDataModule",
    "VAEDataModule",
]
