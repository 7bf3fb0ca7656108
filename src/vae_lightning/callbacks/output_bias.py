"""The decoder's output bias set from the training data's mean image before training (Burda et
al.'s initialisation, ``experiment=iwae_mnist``)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from vae_lightning.errors import ConfigError


class OutputBias(L.Callback):
    """Set the bias of the decoder network's last layer so that p(x|z) has the training split's
    mean image as its mean when that layer's weights are zero: for the Bernoulli likelihood, the
    logit of each pixel's mean (``Likelihood.mean_bias``), when the last layer is affine with a
    bias per output (an MLP); when it is a convolution, with one bias per output channel (conv,
    resnet), the bias of each channel's mean pixel, the one value a channel's bias can take (the
    HVAE authors' code sets one such value for all pixels). It starts the decoder at the data's
    marginal pixel statistics, so the first steps are not spent learning them.

    Done in ``setup``, before Lightning restores a checkpoint: a resumed run keeps its saved
    weights. A decoder whose network ends in neither is refused with one error before
    training."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        decoder = pl_module.decoder
        layers = [m for m in decoder.net.modules() if isinstance(m, nn.Linear | nn.Conv2d |
                                                                   nn.ConvTranspose2d)]
        last = layers[-1] if layers else None
        mean = trainer.datamodule.mean_image("train").to(pl_module.device)
        try:
            bias = decoder.likelihood.mean_bias(mean)
        except NotImplementedError:
            raise ConfigError(
                f"callbacks.output_bias: the likelihood {type(decoder.likelihood).__name__} has "
                "no output bias for a mean image; it works with model/likelihood=bernoulli, "
                "poisson and negative_binomial. "
                "Remove the callback (~callbacks.output_bias).") from None
        if isinstance(last, nn.Conv2d | nn.ConvTranspose2d):
            bias = decoder.likelihood.mean_bias(mean.mean((-2, -1), keepdim=True))
        if last is None or last.bias is None or last.bias.numel() != math.prod(bias.shape):
            raise ConfigError(
                "callbacks.output_bias sets the bias of the decoder's last layer, one per pixel "
                "(an affine layer: model/decoder=mlp) or one per channel (a convolution: "
                "model/decoder=conv or resnet), and this decoder network ends in neither. "
                "Remove the callback (~callbacks.output_bias).")
        with torch.no_grad():
            last.bias.copy_(bias.flatten())
