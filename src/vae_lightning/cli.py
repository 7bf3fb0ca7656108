"""Command-line entry points, Hydra applications over the config groups shipped in
``vae_lightning/conf`` (``pkg://vae_lightning.conf``), so an installed package and a checkout
read the same configs:

- ``vae-train`` (= ``python train.py``): train a VAE;
- ``vae-eval`` (= ``python eval.py``): the ELBO and IW log-likelihood of a checkpoint;
- ``vae-sample`` (= ``python -m vae_lightning.sample``): images drawn from a checkpoint.

Every error a user can act on ends the command with one ``error:`` line and the exit code of
``errors.EXIT_CODES``. torch and Lightning are imported inside the tasks, so that ``--help``,
``--cfg job`` and ``--info`` answer without them (about 3 s less).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import hydra
from omegaconf import DictConfig

import vae_lightning.resolvers  # noqa: F401  (registers the configs' resolvers; imports no torch)
from vae_lightning.errors import UserError

CONFIG_PATH = "pkg://vae_lightning.conf"
T = TypeVar("T")


def _one_log_line_per_record() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own, which
    doubles every record that also reaches Hydra's handlers on the root logger; under Hydra the
    root handlers (console and the job's log file) are the only ones."""
    import lightning  # noqa: F401  (its import adds the handler)

    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()


def _run(task: Callable[[], T]) -> T:
    """Run ``task``; a ``UserError`` ends the command with its one-line message and exit code."""
    _one_log_line_per_record()
    try:
        return task()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


def _check_with_checkpoint(cfg: DictConfig, example: str) -> None:
    """Check a config that names a checkpoint to use (``ckpt_path``, required)."""
    from omegaconf import OmegaConf

    from vae_lightning.config import check
    from vae_lightning.errors import ConfigError

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ConfigError(f"ckpt_path is required, e.g. {example}")
    check(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train(cfg: DictConfig) -> float:
    """``vae-train``: train a VAE (see README.md)."""

    def task() -> float:
        from vae_lightning.train import train as run_training

        return run_training(cfg)["val/elbo"]

    return _run(task)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def evaluate(cfg: DictConfig) -> float:
    """``vae-eval``: the ELBO and the importance-weighted log-likelihood of a checkpoint."""

    def task() -> float:
        from vae_lightning.config import build

        _check_with_checkpoint(cfg, "vae-eval ckpt_path=<run>/checkpoints/last.ckpt")
        results = build(cfg.eval, "eval")(cfg.ckpt_path, cfg.seed, cfg.get("output_dir"))
        for name in ("elbo", "iw"):
            est = results[name]
            print(f"{results['split']} {name:>4}: {est['nats']:.3f} +- {est['nats_se']:.3f} "
                  f"nats, {est['bits_per_dim']:.4f} +- {est['bits_per_dim_se']:.4f} bits/dim")
        print(f"(k={results['k']}, n={results['n']}) written to {results['path']}")
        return results["iw"]["nats"]

    return _run(task)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
def sample(cfg: DictConfig) -> None:
    """``vae-sample``: images drawn from a trained model, as a PNG grid and an .npy array."""

    def task() -> None:
        from vae_lightning.config import build

        _check_with_checkpoint(cfg, "vae-sample ckpt_path=<run>/checkpoints/last.ckpt n=64")
        out = build(cfg, "sample")()
        print(f"written: {out / 'samples.png'}, {out / 'samples.npy'}")

    _run(task)
