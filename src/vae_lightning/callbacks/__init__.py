"""Lightning callbacks: the paper's figures (``Figures``), Fig. 2's curve during training
(``BoundCurve``), the bound before training (``InitialBound``), a training length in samples
seen (``SampleBudget``), the decoder's output bias from the data (``OutputBias``) and the model
summary with the bound's FLOPs (``summary``)."""

from vae_lightning.callbacks.curve import BoundCurve, InitialBound, SampleBudget
from vae_lightning.callbacks.figures import Figures
from vae_lightning.callbacks.output_bias import OutputBias
from vae_lightning.callbacks.tree import ConfigTree

__all__ = ["BoundCurve", "ConfigTree", "Figures", "InitialBound", "OutputBias", "SampleBudget"]
