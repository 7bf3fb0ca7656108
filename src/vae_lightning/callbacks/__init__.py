"""Lightning callbacks: the paper's figures (``Figures``), Fig. 2's curve during training
(``BoundCurve``), a training length in samples seen (``SampleBudget``) and stopping on a signal
without losing work (``GracefulStop``)."""

from vae_lightning.callbacks.curve import BoundCurve, SampleBudget
from vae_lightning.callbacks.figures import Figures
from vae_lightning.callbacks.stop import GracefulStop

__all__ = ["BoundCurve", "Figures", "GracefulStop", "SampleBudget"]
