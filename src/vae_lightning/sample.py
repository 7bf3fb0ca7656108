"""Draw images from a trained model: ``vae-sample ckpt_path=<run>/checkpoints/last.ckpt n=64``
(or ``python -m vae_lightning.sample ...``) writes ``samples.png`` (a grid) and ``samples.npy``
(float32 ``[n, C, H, W]``) into ``<run dir>/samples/``, or ``output_dir``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vae_lightning import rundir
from vae_lightning.args import NonNegativeInt, PositiveInt, checked
from vae_lightning.checkpoints import load_model


class Sampling:
    """``n`` draws z ~ p(z) decoded to E[x|z] (``mean``) or to x ~ p(x|z), from the random state
    ``seed``. ``trusted``: see ``checkpoints.build_trusted``."""

    @checked
    def __init__(self, ckpt_path: str, n: PositiveInt = 64, mean: bool = True,
                 seed: NonNegativeInt = 0, output_dir: str | None = None, device: str = "cpu",
                 trusted: Sequence[str] = ()) -> None:
        self.ckpt_path, self.n, self.mean, self.seed = ckpt_path, n, mean, seed
        self.output_dir, self.device, self.trusted = output_dir, device, tuple(trusted)

    def __call__(self) -> Path:
        """Write the grid and the array; return the folder."""
        from vae_lightning.callbacks.figures import image_figure, tile
        from vae_lightning.plotting import pyplot

        model = load_model(self.ckpt_path, self.device, self.trusted)[0]
        torch.manual_seed(self.seed)
        images = model.sample(self.n, mean=self.mean).cpu()
        out = (Path(self.output_dir) if self.output_dir
               else rundir.path(rundir.of_checkpoint(self.ckpt_path), "samples"))
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "samples.npy", images.numpy().astype(np.float32))
        cols = math.ceil(math.sqrt(self.n))
        rows = math.ceil(self.n / cols)
        padded = torch.cat([images, images.new_ones(rows * cols - self.n, *images.shape[1:])])
        what = "means E[x|z]" if self.mean else "draws x ~ p(x|z)"
        fig = image_figure(tile(padded.reshape(rows, cols, *images.shape[1:])),
                            f"{self.n} samples ({what}, z ~ p(z), seed {self.seed})")
        fig.savefig(out / "samples.png", dpi=100)
        pyplot().close(fig)
        return out


if __name__ == "__main__":
    from vae_lightning.cli import sample

    sample()
