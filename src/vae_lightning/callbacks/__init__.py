"""Lightning callbacks: the paper's figures (``Figures``), Fig. 2's curve during training
(``BoundCurve``) and a training length in samples seen (``SampleBudget``)."""

from vae_lightning.callbacks.curve import BoundCurve, SampleBudget
from vae_lightning.callbacks.figures import Figures

__all__ = ["BoundCurve", "Figures", "SampleBudget"]
