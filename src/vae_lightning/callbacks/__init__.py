"""Lightning callbacks: the paper's figures (``Figures``), Fig. 2's curve during training
(``BoundCurve``), the bound before training (``InitialBound``) and a training length in
samples seen (``SampleBudget``)."""

from vae_lightning.callbacks.curve import BoundCurve, InitialBound, SampleBudget
from vae_lightning.callbacks.figures import Figures
from vae_lightning.callbacks.tree import ConfigTree

__all__ = ["BoundCurve", "ConfigTree", "Figures", "InitialBound", "SampleBudget"]
