"""The data layer's user-facing error (defined with the others in ``vae_lightning.errors``)."""

from vae_lightning.errors import DataError

__all__ = ["DataError"]
