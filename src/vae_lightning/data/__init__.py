"""Data: MNIST, Fashion-MNIST, Frey Face, CIFAR-10, and your own images (a folder of PNG/JPEG
files, or a .npy/.npz array) as Lightning data modules."""

from vae_lightning.errors import DataError

from .array import ArrayDataModule
from .cifar import CIFAR10DataModule
from .datamodules import VAEDataModule
from .folder import FolderDataModule
from .frey import FreyFaceDataModule
from .mnist import FashionMNISTDataModule, MNISTDataModule

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
