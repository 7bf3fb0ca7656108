"""Data: MNIST, Fashion-MNIST and Frey Face as Lightning data modules."""

from .datamodules import (
    FashionMNISTDataModule,
    FreyFaceDataModule,
    MNISTDataModule,
    VAEDataModule,
)

__all__ = ["FashionMNISTDataModule", "FreyFaceDataModule", "MNISTDataModule", "VAEDataModule"]
