"""Evaluation of a trained VAE (``vae-eval`` / ``eval.py``): the ELBO and the importance-weighted
estimate of log p(x) on the test (or validation) data, with standard errors, in nats per data
point and bits/dim.

For each data point x, k samples z_i ~ q(z|x) give log-weights
log w_i = log p(x, z_i) - log q(z_i|x) and two estimates (``objectives.importance_weighted``):
the ELBO, (1/k) sum_i log w_i (estimator A with L = k), and the IW estimate (Burda et al.
2015), log (1/k) sum_i w_i, a lower bound on log p(x) that tightens as k grows and is the
standard test log-likelihood at k = 5000. It is >= the ELBO of the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vae_lightning import rundir
from vae_lightning.args import PositiveInt, checked, fail
from vae_lightning.checkpoints import build_trusted, load_model
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.objectives import auto_chunk, importance_weighted


@dataclass
class Estimate:
    """Mean over data points of a per-point estimate, with its standard error, in nats and
    bits/dim (bits/dim = -nats / (D ln 2), D values per image: lower is better)."""

    nats: float
    nats_se: float
    bits_per_dim: float
    bits_per_dim_se: float

    @classmethod
    def of(cls, values: Tensor, dims: int) -> Estimate:
        values = values.double()
        se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan
        per_bit = dims * math.log(2)
        mean = values.mean().item()
        return cls(mean, se, -mean / per_bit, se / per_bit)


ACTIVE = 1e-2  # a latent dimension is active when Cov_x(E_q[z_j]) exceeds this (Burda et al.)


def evaluate(model: VAE, batches: Iterable[Tensor], k: int,
             chunk: int | None = None) -> dict[str, Any]:
    """The ELBO and IW estimates over all ``batches`` (model inputs on the model's device):
    ``{"elbo": Estimate, "iw": Estimate, "n": number of data points, "active_units": the
    latent dimensions whose posterior mean varies over the data by more than ACTIVE}``."""
    model.eval()
    elbos, iws, means = [], [], []
    for x in batches:
        elbo, iw = importance_weighted(model, x, k, chunk)
        elbos.append(elbo.cpu())
        iws.append(iw.cpu())
        with torch.no_grad():
            means.append(model.encoder(x).mean.cpu().double())
    elbo, iw = torch.cat(elbos), torch.cat(iws)
    dims = math.prod(model.data_shape)
    activity = torch.cat(means).var(0)
    return {"elbo": Estimate.of(elbo, dims), "iw": Estimate.of(iw, dims), "n": len(iw),
            "active_units": int((activity > ACTIVE).sum()), "latent": len(activity)}


class Evaluation:
    """The ``eval`` options: ``k`` importance samples per data point, scored ``chunk`` at a time
    (memory ~ chunk x batch_size x pixels; None: ``objectives.auto_chunk``, sized to the cache on
    a CPU), ``batch_size`` data points per batch, on the ``split``
    (``test`` or ``val``), its first ``limit`` points only when set (a quicker estimate, e.g. on a
    CPU), on ``device`` (``auto``: CUDA when available). ``trusted``: dotted names
    of your own classes a checkpoint may build (see ``checkpoints.build_trusted``)."""

    @checked
    def __init__(self, k: PositiveInt = 5000, chunk: PositiveInt | None = None,
                 batch_size: PositiveInt = 100, split: Literal["test", "val"] = "test",
                 device: str = "auto", trusted: Sequence[str] = (),
                 limit: PositiveInt | None = None) -> None:
        self.k, self.chunk, self.batch_size, self.split = k, chunk, batch_size, split
        self.limit = limit
        self.trusted = tuple(trusted)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, ValueError):
            fail("eval", "device", device, "expected auto, cpu, cuda or cuda:<index>")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            fail("eval", "device", device, "CUDA is not available on this machine; use auto or "
                 "cpu")

    def __call__(self, ckpt_path: str, seed: int, output_dir: str | None) -> dict[str, Any]:
        """Rebuild the model and data of ``ckpt_path``, estimate, write ``eval.json`` into
        ``output_dir`` (default: the checkpoint's run directory) and return its content."""
        from tqdm.auto import tqdm

        model, config, checkpoint = load_model(ckpt_path, self.device, self.trusted)
        data = {**config["data"], "eval_batch_size": self.batch_size, "on_device": False}
        datamodule = build_trusted(data, "data", ckpt_path, self.trusted)
        datamodule.setup("test" if self.split == "test" else "validate")
        loader = (datamodule.test_dataloader() if self.split == "test"
                  else datamodule.val_dataloader())

        def batches():
            left = self.limit  # points still to score; None: the whole split
            total = len(loader) if left is None else min(len(loader),
                                                          math.ceil(left / self.batch_size))
            for x, y in tqdm(loader, desc=f"eval k={self.k} on {self.split}", unit="batch",
                             total=total):
                if left is not None:
                    if left <= 0:
                        break
                    x, y = x[:left], y[:left]
                    left -= len(x)
                yield datamodule.to_inputs((x.to(self.device), y))[0]

        torch.manual_seed(seed)
        try:
            estimates = evaluate(model, batches(), self.k, self.chunk)
        except torch.OutOfMemoryError:
            batch = torch.empty(1, device=self.device).expand(self.batch_size, *model.data_shape)
            chunk = self.chunk or auto_chunk(batch, self.k)  # a view: allocates nothing
            raise ConfigError(
                f"The evaluation ran out of memory on {self.device}, scoring eval.chunk={chunk} "
                f"samples for eval.batch_size={self.batch_size} points per decoder pass (memory "
                "~ chunk x batch_size x pixels, times the decoder's widest layer); nothing was "
                "written. Give a smaller eval.chunk or eval.batch_size (the estimate does not "
                "depend on either), or eval.device=cpu.") from None
        continuous = getattr(datamodule, "binarize", "none") == "none"
        results = {
            "elbo": asdict(estimates["elbo"]),
            "iw": asdict(estimates["iw"]),
            "k": self.k,
            "split": self.split,
            "n": estimates["n"],
            "active_units": estimates["active_units"],
            "latent": estimates["latent"],
            "input_dim": math.prod(model.data_shape),
            "data": getattr(datamodule, "name", None),
            "units": (
                "nats per data point; bits/dim = -nats / (input_dim ln 2). The data are "
                "continuous, so these are log densities (they can be positive and bits/dim "
                "negative)." if continuous else
                "nats per data point; bits/dim = -nats / (input_dim ln 2) (binary data: log "
                "probabilities)."
            ),
            "checkpoint": str(Path(ckpt_path).resolve()),
            "train_samples_seen": checkpoint.get("samples_seen"),
            "seed": seed,
        }
        out = Path(output_dir) if output_dir else rundir.of_checkpoint(ckpt_path)
        out.mkdir(parents=True, exist_ok=True)
        path = rundir.path(out, "eval")
        rundir.write_json(path, results)
        results["path"] = str(path)
        return results
