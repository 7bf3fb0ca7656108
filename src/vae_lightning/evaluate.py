"""Evaluation of a trained VAE: the ELBO and the importance-weighted estimate of log p(x).

For each data point x, k samples z_i ~ q(z|x) give log-weights
log w_i = log p(x, z_i) - log q(z_i|x) and two estimates, both in nats:

- ELBO: (1/k) sum_i log w_i (estimator A, eq. 6, with L = k);
- IW (Burda et al. 2015): log (1/k) sum_i w_i, a lower bound on log p(x) that tightens as k grows
  and is the standard estimate of test log-likelihood at k = 5000. By Jensen's inequality it is
  >= the ELBO of the same samples, and equal to it when k = 1.

The k samples are scored ``chunk`` at a time (memory is bounded by chunk x batch x pixels); the
chunks are combined with a running logsumexp and a running mean. Each z_i is drawn by its own
``q.rsample()`` call, in order, so the random stream, and hence the estimate, is the same for
every ``chunk`` given the same seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from vae_lightning.module import VAE
from vae_lightning.resume import CheckpointError, read_checkpoint
from vae_lightning.train import build_datamodule, build_model


def load_checkpoint(path: str | Path) -> tuple[DictConfig, VAE, dict[str, Any]]:
    """The run config saved in the checkpoint at ``path``, the VAE it rebuilds with the saved
    weights (in eval mode, on the CPU), and the raw checkpoint. Reads with ``weights_only=True``
    (``resume.read_checkpoint``): a checkpoint is never unpickled as arbitrary code."""
    checkpoint = read_checkpoint(path)
    try:
        cfg = OmegaConf.create(checkpoint["hyper_parameters"]["config"])
        model = build_model(cfg, checkpoint["hyper_parameters"]["input_dim"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(
            f"Checkpoint {path} is not a vae-lightning VAE checkpoint with its run config "
            f"({type(err).__name__}: {err})."
        ) from None
    return cfg, model.eval(), checkpoint


@torch.no_grad()
def log_likelihood(model: VAE, x: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Per-data-point (ELBO, IW estimate of log p(x)) of ``x`` ``[B, D]`` from k samples of q(z|x),
    scored ``chunk`` samples per forward pass of the decoder. Returns two ``[B]`` tensors."""
    if k < 1 or chunk < 1:
        raise ValueError(f"k={k} and chunk={chunk} must both be at least 1.")
    q = model.encoder(x)
    prior = model.prior.distribution()  # once per batch: a VampPrior encodes its pseudo-inputs
    running_lse = torch.full((x.shape[0],), -math.inf, device=x.device)
    running_sum = torch.zeros(x.shape[0], device=x.device)
    for start in range(0, k, chunk):
        z = torch.stack([q.rsample() for _ in range(min(chunk, k - start))])
        log_w = model.decoder(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
        running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, dim=0))
        running_sum += log_w.sum(0)
    return running_sum / k, running_lse - math.log(k)


@dataclass
class Estimate:
    """Mean over data points of a per-point estimate, with its standard error, in nats and
    bits/dim (bits/dim = -nats / (D ln 2): lower is better)."""

    nats: float
    nats_se: float
    bits_per_dim: float
    bits_per_dim_se: float

    @classmethod
    def of(cls, values: Tensor, input_dim: int) -> Estimate:
        values = values.double()
        se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan
        per_bit = input_dim * math.log(2)
        mean = values.mean().item()
        return cls(mean, se, -mean / per_bit, se / per_bit)


def evaluate(
    model: VAE, batches: Iterable[Tensor], k: int, chunk: int, input_dim: int
) -> dict[str, Any]:
    """The ELBO and IW estimates over all ``batches`` (float ``[B, D]`` on the model's device):
    ``{"elbo": Estimate, "iw": Estimate, "n": number of data points}``."""
    model.eval()
    elbos, iws = [], []
    for x in batches:
        elbo, iw = log_likelihood(model, x, k, chunk)
        elbos.append(elbo.cpu())
        iws.append(iw.cpu())
    elbo, iw = torch.cat(elbos), torch.cat(iws)
    return {
        "elbo": Estimate.of(elbo, input_dim),
        "iw": Estimate.of(iw, input_dim),
        "n": len(iw),
    }


def output_dir_for(ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint: the parent of its ``checkpoints/`` folder, else the
    folder holding it."""
    parent = Path(ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """``eval.py``: rebuild the model and data of ``cfg.ckpt_path``, estimate the ELBO and log p(x)
    on ``cfg.eval.split`` with ``cfg.eval.k`` importance samples, write ``eval.json`` into
    ``cfg.output_dir`` (default: the checkpoint's run directory) and return its content."""
    from tqdm.auto import tqdm

    opts = cfg.eval
    if opts.split not in ("test", "val"):
        raise ValueError(f"eval.split={opts.split!r} is not allowed: accepted: test, val.")
    for key in ("k", "chunk", "batch_size"):
        if not isinstance(opts[key], int) or opts[key] < 1:
            raise ValueError(f"eval.{key}={opts[key]!r} is not allowed: expected an integer >= 1.")
    run_cfg, model, checkpoint = load_checkpoint(cfg.ckpt_path)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
    )
    model.to(device)
    with open_dict(run_cfg):
        run_cfg.data.eval_batch_size = opts.batch_size
    datamodule = build_datamodule(run_cfg)
    datamodule.setup("test" if opts.split == "test" else "validate")
    loader = datamodule.test_dataloader() if opts.split == "test" else datamodule.val_dataloader()

    def batches():
        for batch in tqdm(loader, desc=f"eval k={opts.k} on {opts.split}", unit="batch"):
            x, y = datamodule.on_after_batch_transfer((batch[0].to(device), batch[1]), 0)
            yield x

    torch.manual_seed(cfg.seed)
    estimates = evaluate(model, batches(), opts.k, opts.chunk, datamodule.input_dim)
    continuous = run_cfg.data.get("binarize", "none") == "none"
    results = {
        "elbo": asdict(estimates["elbo"]),
        "iw": asdict(estimates["iw"]),
        "k": opts.k,
        "split": opts.split,
        "n": estimates["n"],
        "input_dim": datamodule.input_dim,
        "data": getattr(datamodule, "name", None),
        "units": (
            "nats per data point; bits/dim = -nats / (input_dim ln 2). The data are continuous, "
            "so these are log densities (they can be positive and bits/dim negative)."
            if continuous else
            "nats per data point; bits/dim = -nats / (input_dim ln 2) (binary data: log "
            "probabilities)."
        ),
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "train_samples_seen": checkpoint.get("samples_seen"),
        "seed": cfg.seed,
    }
    out = Path(cfg.output_dir) if cfg.get("output_dir") else output_dir_for(cfg.ckpt_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    results["path"] = str(out / "eval.json")
    return results
