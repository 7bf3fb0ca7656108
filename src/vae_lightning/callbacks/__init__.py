"""Lightning callbacks: the paper's figures (``Figures``)."""

from vae_lightning.callbacks.figures import Figures

__all__ = ["Figures"]
