"""Command-line entry points: ``vae-train`` (= ``python train.py``) and ``vae-eval``
(= ``python eval.py``), Hydra applications over the config groups shipped in
``vae_lightning/conf`` (``pkg://vae_lightning.conf``), so an installed package and a checkout read
the same configs.

torch and Lightning are imported inside the tasks, so that ``--help``, ``--cfg job`` and
``--info`` answer without them (about 3 s less).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from vae_lightning.config import ConfigError  # registers the config schemas; imports no torch

CONFIG_PATH = "pkg://vae_lightning.conf"


def _one_log_line_per_record() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own, which
    doubles every record that also reaches Hydra's handlers on the root logger; under Hydra the
    root handlers (console and the job's log file) are the only ones."""
    import lightning  # noqa: F401  (its import adds the handler)

    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train(cfg: DictConfig) -> float:
    """``vae-train``: train a VAE (see README.md)."""
    _one_log_line_per_record()
    from vae_lightning.data import DataError
    from vae_lightning.module import NonFiniteLossError
    from vae_lightning.train import train as run_training

    try:
        return run_training(cfg)["val/elbo"]
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(3) from None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def evaluate(cfg: DictConfig) -> float:
    """``vae-eval``: the ELBO and the importance-weighted log-likelihood of a checkpoint."""
    _one_log_line_per_record()
    from vae_lightning.evaluate import run_eval

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        print("error: ckpt_path is required, e.g. vae-eval ckpt_path=<run>/checkpoints/"
              "last.ckpt", file=sys.stderr)
        raise SystemExit(2)
    try:
        results = run_eval(cfg)
    except ValueError as err:  # CheckpointError, ConfigError and bad eval.* options
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in ("elbo", "iw"):
        est = results[name]
        print(f"{results['split']} {name:>4}: {est['nats']:.3f} +- {est['nats_se']:.3f} nats, "
              f"{est['bits_per_dim']:.4f} +- {est['bits_per_dim_se']:.4f} bits/dim")
    print(f"(k={results['k']}, n={results['n']}) written to {results['path']}")
    return results["iw"]["nats"]
