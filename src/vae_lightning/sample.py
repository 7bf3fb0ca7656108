"""Draw images from a trained model: ``vae-sample ckpt_path=<run>/checkpoints/last.ckpt n=64``
(or ``python -m vae_lightning.sample ...``) writes ``samples.png`` (a grid of the first
``GRID_MAX``) and ``samples.npy`` (float32 ``[n, C, H, W]``) into ``<run dir>/samples/``, or
``output_dir``."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vae_lightning import rundir
from vae_lightning.args import NonNegativeInt, PositiveInt, checked
from vae_lightning.checkpoints import load_model
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import device_of, writable_directory
from vae_lightning.module import VAE

GRID_MAX = 400  # images drawn in samples.png; samples.npy holds all n
CHUNK = 1024  # images decoded per pass: memory stays bounded whatever n


class Sampling:
    """``n`` draws z ~ p(z) decoded to E[x|z] (``mean``) or to x ~ p(x|z), from the random state
    ``seed``, on ``device`` (``auto``: CUDA when available). ``trusted``: see
    ``checkpoints.build_trusted``.

    The images are decoded ``CHUNK`` at a time straight into ``samples.npy`` on disk, so memory
    does not grow with n; n is refused before anything is drawn when the array would not fit on
    the output directory's disk."""

    @checked
    def __init__(self, ckpt_path: str, n: PositiveInt = 64, mean: bool = True,
                 seed: NonNegativeInt = 0, output_dir: str | None = None, device: str = "auto",
                 trusted: Sequence[str] = ()) -> None:
        self.ckpt_path, self.n, self.mean, self.seed = ckpt_path, n, mean, seed
        self.output_dir, self.trusted = output_dir, tuple(trusted)
        self.device = device_of("sample", device)

    def __call__(self) -> Path:
        """Write the array and the grid; return the folder."""
        from vae_lightning.callbacks.figures import image_figure, tile
        from vae_lightning.plotting import pyplot

        out = (Path(self.output_dir) if self.output_dir
               else rundir.path(rundir.of_checkpoint(self.ckpt_path), "samples"))
        writable_directory(out, "output_dir")
        model = load_model(self.ckpt_path, VAE, self.device, self.trusted)[0]
        self._refuse_too_many(out, model.data_shape)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed)
        array = np.lib.format.open_memmap(out / "samples.npy.tmp", mode="w+", dtype=np.float32,
                                          shape=(self.n, *model.data_shape))
        for start in range(0, self.n, CHUNK):
            count = min(CHUNK, self.n - start)
            array[start:start + count] = model.sample(count, mean=self.mean).cpu().numpy()
        array.flush()
        del array
        (out / "samples.npy.tmp").replace(out / "samples.npy")
        shown = min(self.n, GRID_MAX)
        images = torch.from_numpy(np.load(out / "samples.npy", mmap_mode="r")[:shown].copy())
        cols = math.ceil(math.sqrt(shown))
        rows = math.ceil(shown / cols)
        padded = torch.cat([images, images.new_ones(rows * cols - shown, *images.shape[1:])])
        what = "means E[x|z]" if self.mean else "draws x ~ p(x|z)"
        first = f"the first {shown} of " if shown < self.n else ""
        fig = image_figure(tile(padded.reshape(rows, cols, *images.shape[1:])),
                           f"{first}{self.n} samples ({what}, z ~ p(z), seed {self.seed})")
        fig.savefig(out / "samples.png", dpi=100)
        pyplot().close(fig)
        return out

    def _refuse_too_many(self, out: Path, shape: Sequence[int]) -> None:
        """Refuse an n whose float32 array would not fit on the output directory's disk."""
        needed = self.n * math.prod(shape) * 4
        existing = next(p for p in [out, *out.parents] if p.exists())
        free = shutil.disk_usage(existing).free
        if needed > free:
            raise ConfigError(
                f"n={self.n} samples of shape {list(shape)} make a {needed / 2**30:.3g} GiB "
                f"samples.npy, and {existing} has {free / 2**30:.3g} GiB free; nothing was "
                "drawn. Lower n, or choose an output_dir on a larger disk.")


if __name__ == "__main__":
    from vae_lightning.cli import sample

    sample()
