"""Data: MNIST, Fashion-MNIST and Frey Face as Lightning data modules."""

from .datamodules import (
    FashionMNISTDataModule,
    FreyFaceDataModule,
    MNISTDataModule,
    VAEDataModule,
)
from .errors import DataError

__all__ = [
    "DataError",
    "FashionMNISTDataModule",
    "FreyFaceDataModule",
    "MNISTDataModule",
    "VAEDataModule",
]
